"""TFDS datasets built from the user's own files (ImageNet's tars in a manual directory), once,
as ArrayRecord so the eval iterator reads them by index. Nothing is downloaded: TFDS is told
not to look for a prepared copy online. What a copy was prepared from is recorded and checked
before it is reused (coca_jax/data/provenance.py)."""
import tarfile
from typing import Optional, Tuple

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from coca_jax.data import provenance
from coca_jax.data.config import resolve as resolve_data
from coca_jax.data.spec import DatasetSpec


# Archives whose members are the examples of a split: a prepared split must hold them all.
SPLIT_ARCHIVES = {"imagenet2012": {"validation": "ILSVRC2012_img_val.tar"}}


def archive_members(path) -> Tuple[int, Optional[str]]:
  """(file members of a tar, what is wrong with it or None): a member that ends past the end
  of the file, or an unreadable header, means the archive was cut short."""
  path = epath.Path(path)
  size, count = path.stat().length, 0
  try:
    with path.open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
      for member in tar:
        if not member.isfile():
          continue
        if member.offset_data + member.size > size:
          return count, (f"{path} is cut short: member {member.name} ends at byte "
                         f"{member.offset_data + member.size:,}, the file has {size:,}")
        count += 1
  except (tarfile.TarError, EOFError, OSError) as e:
    return count, f"{path} is unreadable after {count} members ({e})"
  return count, None


def prepare(name: str, data_dir: Optional[str], manual_dir: str,
            reprepare: bool = False) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name`, prepared once from the files in `manual_dir`.

  The archives are checked first (a tar cut short is refused naming it), each prepared split
  is compared with its archive's members (a shortfall is refused, the copy removed) and with
  the size TFDS documents (smaller: a warning), and what it was prepared from is recorded
  (`provenance`): a prepared copy whose files changed since is refused, unless `reprepare`.
  """
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  manual = epath.Path(manual_dir)
  inputs = provenance.describe(sorted(p for p in manual.iterdir() if p.is_file())
                               if manual.is_dir() else [manual])
  if builder.is_prepared() and not reprepare:
    provenance.check(builder.data_dir, name, inputs)
    return builder
  if builder.is_prepared():
    epath.Path(builder.data_dir).rmtree()
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  archives = {split: manual / file for split, file in SPLIT_ARCHIVES.get(name, {}).items()
              if (manual / file).exists()}
  members = {}
  for split, archive in archives.items():
    members[split], problem = archive_members(archive)
    if problem:
      raise ValueError(f"{name}: {problem}; supply the complete file and run again (nothing "
                       "was prepared)")
  logging.warning("preparing %s from %s into %s", name, manual_dir, builder.data_dir)
  print(f"preparing {name} from {manual_dir} (once)", flush=True)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  short = [f"{split}: {splits.get(split, 0):,} examples from the {n:,} files of "
           f"{archives[split]}" for split, n in members.items() if splits.get(split, 0) < n]
  if short:
    epath.Path(builder.data_dir).rmtree()
    raise ValueError(f"{name}: the prepared copy lacks examples ({'; '.join(short)}); it was "
                     "removed")
  provenance.record(builder.data_dir, inputs, splits)
  provenance.check_documented_sizes(name, splits)
  return builder


def prepare_all(config, manual_dir: str) -> None:
  """Prepares every TFDS catalog dataset the chosen evaluations name (not the embedded one,
  nor files or folders, which need no manual directory)."""
  from coca_jax.evals import common, option  # pylint: disable=import-outside-toplevel
  data_cfg = resolve_data(config.data)
  data_dir = data_cfg["data_dir"]
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
    prepare(name, directory, manual_dir, data_cfg["reprepare"])
