"""`coca_shapes`: the embedded default dataset, a TFDS builder that needs no download.

It draws scenes of coloured shapes (see `shapes.py`) deterministically and writes them as
ArrayRecord (random access for Grain) in a few seconds, the first time it is asked for:

  builder = embedded.prepare(data_dir)          # or tfds.builder("coca_shapes", data_dir=...)
  source = builder.as_data_source("train")

Configs: "default" (train 20,000 / validation 1,000 / test 2,000; about 10 s to generate on
a laptop core) and "small" (512 / 96 / 96, for tests). Example i of a split is the same in both.

Features: `image` (64x64 PNG), `captions` (4 phrasings), `label` (colour and shape of the main
object: 24 classes), `scene` (12 integers, for scoring generated captions).
"""
import dataclasses
import io
import logging
from typing import Optional, Tuple

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from coca_jax.data import shapes

NAME = "coca_shapes"
SEEDS = {"train": 0, "validation": 1, "test": 2}
_SECONDS = {"default": 10, "small": 1}  # generation time measured on a 2-core CPU
IMAGE_SIZE = 64


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """A `coca_shapes` config: `sizes` holds (split, number of examples) pairs."""
  sizes: Tuple[Tuple[str, int], ...] = ()  # (split, number of examples)


class CocaShapes(tfds.core.GeneratorBasedBuilder):
  """One or two coloured shapes per image, captioned with colour, shape, size and position."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="default", sizes=(("train", 20_000), ("validation", 1_000),
                                          ("test", 2_000))),
      ShapesConfig(name="small", sizes=(("train", 512), ("validation", 96), ("test", 96))),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                         encoding_format="png"),
            "captions": tfds.features.Sequence(tfds.features.Text()),
            "label": tfds.features.ClassLabel(names=shapes.CLASS_NAMES),
            "scene": tfds.features.Tensor(shape=(shapes.SCENE_LEN,), dtype=np.int32),
        }),
        supervised_keys=("image", "label"),
        description=__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is drawn, nothing is downloaded
    return {split: self._generate_examples(SEEDS[split], size)
            for split, size in self.builder_config.sizes}

  def _generate_examples(self, seed: int, size: int):
    for index in range(size):
      example = shapes.make_example(seed, index, IMAGE_SIZE)
      png = io.BytesIO()
      Image.fromarray(example["image"]).save(png, format="PNG")
      example["image"] = png.getvalue()
      yield index, example


class _NotYetGenerated(logging.Filter):
  """Drops TFDS's warning that a dataset folder has no dataset_info.json: true of every
  dataset before its first generation, and nothing a user can act on."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "has no dataset_info.json" not in record.getMessage()


def prepare(data_dir: Optional[str] = None, config: str = "default") -> tfds.core.DatasetBuilder:
  """The `coca_shapes` builder in `data_dir` (TFDS default when None), generated if missing."""
  quiet = _NotYetGenerated()
  logging.getLogger("absl").addFilter(quiet)
  try:
    builder = CocaShapes(config=config, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      sizes = ", ".join(f"{split} {n:,}" for split, n in builder.builder_config.sizes)
      print(f"generating the embedded dataset coca_shapes/{config} ({sizes} images) into "
            f"{builder.data_dir}: once, about {_SECONDS.get(config, 10)} s on 2 CPU cores",
            flush=True)
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP))
  finally:
    logging.getLogger("absl").removeFilter(quiet)
  return builder
