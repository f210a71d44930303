"""TFDS datasets built from the user's own files (ImageNet's tars in a manual directory), once,
as ArrayRecord so the eval iterator reads them by index. Nothing is downloaded: TFDS is told
not to look for a prepared copy online."""
from typing import Optional

from absl import logging
import tensorflow_datasets as tfds

from coca_jax.data.config import resolve as resolve_data
from coca_jax.data.sources import DatasetSpec


def prepare(name: str, data_dir: Optional[str], manual_dir: str) -> tfds.core.DatasetBuilder:
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    logging.warning("preparing %s from %s into %s", name, manual_dir, builder.data_dir)
    print(f"preparing {name} from {manual_dir} (once)", flush=True)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, try_download_gcs=False,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def prepare_all(config, manual_dir: str) -> None:
  """Prepares every TFDS catalog dataset the chosen evaluations name (not the embedded one,
  nor files or folders, which need no manual directory)."""
  from coca_jax.evals import common, option  # pylint: disable=import-outside-toplevel
  data_dir = resolve_data(config.data)["data_dir"]
  chosen = {"zeroshot": option(config, "zeroshot") or option(config, "generative_zeroshot"),
            "retrieval": option(config, "retrieval"), "captions": option(config, "captions")}
  names = set()
  for key, dataset in option(config, "datasets").items():
    if not chosen[key]:
      continue
    spec = common.dataset_spec(config, dataset)
    if spec.get("format", "tfds") != "tfds" or spec.get("path"):
      continue
    spec = DatasetSpec.parse(spec)
    if not spec.name.startswith("coca_shapes"):
      names.add((spec.name, spec.data_dir or data_dir))
  for name, directory in sorted(names, key=str):
    prepare(name, directory, manual_dir)
