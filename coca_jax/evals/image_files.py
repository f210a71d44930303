"""Any pile of images as an inference dataset (`--dataset=images:PATH`):

  PATH a folder          its image files (not its sub-folders), sorted by name
  PATH a glob            "photos/**/*.jpg", the matches sorted
  PATH a text file       one image path per line (local or remote, e.g. gs://...; relative
                         paths start at the list's folder), in the file's order

Records carry the image bytes, no captions, and their path (`source.files[i]`), so outputs can
name each row's file. An unreadable file is masked by the eval iterator (counted by reason) and
listed by `coca_jax.inference.batch`; the run goes on. Order is fixed, so every process agrees
on it.
"""
import glob
import os
from typing import Dict, List

import numpy as np
from etils import epath

from coca_jax.data import formats, pipeline, shapes
from coca_jax.data.folder import EXTENSIONS
from coca_jax.evals.folder import source_eval_iterator


def list_images(path: str) -> List[str]:
  """Image paths of a folder, a glob or a list file (see the module docstring).

  Raises FileNotFoundError when nothing matches."""
  if any(c in path for c in "*?["):
    paths = sorted(p for p in glob.glob(path, recursive=True)
                   if p.lower().endswith(EXTENSIONS))
  elif "://" not in path and os.path.isdir(path):
    paths = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if f.lower().endswith(EXTENSIONS) and os.path.isfile(os.path.join(path, f)))
  elif path.lower().endswith(EXTENSIONS):
    paths = [path]
  else:
    base = os.path.dirname(path)
    with formats.open_text(path) as f:
      lines = [line.strip() for line in f if line.strip()]
    paths = [line if "://" in line or os.path.isabs(line) else os.path.join(base, line)
             for line in lines]
  if not paths:
    raise FileNotFoundError(f"no images at {path!r} (a folder of image files, a glob, or a "
                            "text file listing image paths)")
  return paths


class ImageFilesSource:
  """Random access to a pile of images as records without captions."""

  class_names = None

  def __init__(self, path: str):
    self.files = list_images(path)  # as FolderSource names them

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> Dict:
    image = epath.Path(self.files[int(index)]).read_bytes()  # a missing file: masked, counted
    return {"image": image, "captions": [], "label": -1,
            "scene": np.full(shapes.SCENE_LEN, -1, np.int32)}


def build_eval_iterator(data_config, spec: Dict, global_batch_size: int, tokenizer,
                        **processes) -> pipeline.EvalIterator:
  """The eval iterator over spec["path"]'s images (`processes`: process_index / _count)."""
  return source_eval_iterator(data_config, ImageFilesSource(spec["path"]), global_batch_size,
                              tokenizer, **processes)
