"""A folder of images per class as an evaluation dataset:

  ROOT/<class name>/<image files>            (split "all")
  ROOT/<split>/<class name>/<image files>    (another split, e.g. "val")

Classes are the sub-folder names in sorted order ("_" read as a space in prompts); images are
read in place, in sorted order. Records have the shape the data pipeline's Source gives, so the
pipeline's EvalIterator serves them (padding, mask, index, every example once).
"""
import os
from typing import Dict, List, Optional, Sequence

import grain
import jax
import numpy as np

from coca_jax.data import pipeline, shapes
from coca_jax.data.config import resolve

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class FolderSource:
  """Random access to ROOT[/split]/<class>/<image> as records."""

  def __init__(self, root: str, split: str = "all", template: str = "a photo of a {}."):
    base = os.path.join(root, split) if split not in ("", "all") else root
    if not os.path.isdir(base):
      raise FileNotFoundError(f"image folder {base!r} does not exist")
    classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    if not classes:
      raise ValueError(f"{base}: no class sub-folders")
    self.class_names = tuple(classes)
    self.files: List[str] = []
    self.labels: List[int] = []
    for label, name in enumerate(classes):
      directory = os.path.join(base, name)
      for file in sorted(os.listdir(directory)):
        if file.lower().endswith(EXTENSIONS):
          self.files.append(os.path.join(directory, file))
          self.labels.append(label)
    self.template, self.base = template, base

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> Dict:
    with open(self.files[int(index)], "rb") as f:
      image = f.read()
    label = self.labels[int(index)]
    return {"image": image, "label": label,
            "captions": [self.template.format(self.prompt_names()[label])],
            "scene": np.full(shapes.SCENE_LEN, -1, np.int32)}

  def prompt_names(self) -> Sequence[str]:
    return tuple(n.replace("_", " ") for n in self.class_names)


def build_eval_iterator(data_config, spec: Dict, global_batch_size: int, tokenizer,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> pipeline.EvalIterator:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  cfg = resolve(data_config)
  source = FolderSource(spec["path"], spec.get("split", "all"))
  make = pipeline.ExampleMaker.from_config(cfg, tokenizer, train=False)
  read = grain.ReadOptions(num_threads=cfg["num_threads"], prefetch_buffer_size=cfg["prefetch"])
  return pipeline.EvalIterator(source, make, global_batch_size, process_index, process_count,
                               read)
