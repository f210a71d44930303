"""A folder of images per class as a dataset (training pairs from prompt templates, or
evaluation):

  ROOT/<class name>/<image files>            (split "all")
  ROOT/<split>/<class name>/<image files>    (another split, e.g. "val")

Classes are the sub-folders in sorted order, numerically when every name is a number (ImageNetV2's
`0/ ... 999/`); images are read in place, in sorted order. Records have the shape the data
pipeline's Source gives (coca_jax/data/sources.py).

Class names for prompts (`class_names_for`), in this order:
  * a class-names file (`class_names=PATH`): a JSON object {folder: name}, or text with one
    name per line: line i names folder `i` when the folders are numbers, else the i-th folder;
  * ImageNet-1k's names (CLIP's curated list): for numbered folders when they are 1,000
    (0-999) or `class_names="imagenet"` is given, and for WordNet-id folders (`n01440764/`)
    through the list the package ships;
  * the folder names, "_" read as a space.
Names that still look like ids (numbers, WordNet ids) are warned about, with their count.
"""
import json
import os
from typing import Dict, List, Sequence, Tuple

from absl import logging
import numpy as np

from coca_jax.data import formats, shapes
from coca_jax.data.spec import DatasetSpec
from coca_jax.evals import imagenet

EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".avif", ".tif",
              ".tiff")


def sort_classes(folders: Sequence[str]) -> List[str]:
  """Sorted folder names; numerically when all are numbers ("2" before "10")."""
  if folders and all(f.isdigit() for f in folders):
    return sorted(folders, key=lambda f: (int(f), f))
  return sorted(folders)


def _names_file(path: str, folders: Sequence[str]) -> List[str]:
  with formats.open_text(path) as f:
    text = f.read()
  if text.lstrip().startswith("{"):
    mapping = json.loads(text)
    missing = [d for d in folders if d not in mapping]
    if missing:
      raise ValueError(f"class names file {path}: no name for {len(missing)} folder(s), e.g. "
                       f"{missing[:5]}")
    return [str(mapping[d]) for d in folders]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if all(d.isdigit() for d in folders):
    too_big = [d for d in folders if int(d) >= len(lines)]
    if too_big:
      raise ValueError(f"class names file {path}: {len(lines)} names, but folders go up to "
                       f"{max(int(d) for d in too_big)} (line i names folder i)")
    return [lines[int(d)] for d in folders]
  if len(lines) != len(folders):
    raise ValueError(f"class names file {path}: {len(lines)} names for {len(folders)} class "
                     "folders (one name per line, in the folders' sorted order; or a JSON "
                     "object {folder: name})")
  return lines


def class_names_for(folders: Sequence[str], class_names: str = "") -> Tuple[List[str], bool]:
  """Readable class names of sorted class folders -> (names, whether they are ImageNet's).

  Args:
    folders: sub-folder names, in label order (`sort_classes`).
    class_names: "" (automatic), "imagenet" (numbered or WordNet-id folders are ImageNet-1k
      classes), or the path of a class-names file (see the module docstring).
  Raises:
    ValueError: a names file that does not cover the folders; "imagenet" for folders that are
      neither class indices 0-999 nor ImageNet WordNet ids.
  """
  digits = all(d.isdigit() for d in folders)
  wnid_index = {w: i for i, w in enumerate(imagenet.wnids())}
  as_imagenet = class_names == "imagenet" or (
      not class_names and ((digits and len(folders) == imagenet.NUM_CLASSES)
                           or all(d in wnid_index for d in folders)))
  if class_names and class_names != "imagenet":
    names, is_imagenet = _names_file(class_names, folders), False
  elif as_imagenet:
    if digits and all(int(d) < imagenet.NUM_CLASSES for d in folders):
      indices = [int(d) for d in folders]
    elif all(d in wnid_index for d in folders):
      indices = [wnid_index[d] for d in folders]
    else:
      raise ValueError(f"class_names='imagenet': folders must be ImageNet class indices 0-999 "
                       f"or WordNet ids, not e.g. {list(folders)[:5]}")
    names, is_imagenet = [imagenet.class_names()[i] for i in indices], True
  else:
    names, is_imagenet = [d.replace("_", " ") for d in folders], False
  ids = [n for n in names if n.isdigit() or imagenet.is_wnid(n)]
  if ids:
    logging.warning("%d of %d class names look like ids, not words: prompts will read 'a photo "
                    "of a %s.'; give a class-names file (evals.class_names=PATH, or "
                    "--class_names)", len(ids), len(names), ids[0])
  return names, is_imagenet


class FolderSource:
  """Random access to ROOT[/split]/<class>/<image> as records.

  Attributes: `class_names` (folder names, label order), `prompt_names()` (what prompts say),
  `imagenet` (the classes are ImageNet-1k's, so its 80 templates fit).
  """

  def __init__(self, root: str, split: str = "all", template: str = "a photo of a {}.",
               class_names: str = "", templates=None):
    """`templates`: captions are every template filled with the class name (training draws
    one per visit); otherwise the single `template`."""
    self.spec = DatasetSpec(name=f"folder:{root}", split=split, format="folder", path=root)
    self.split = split
    base = os.path.join(root, split) if split not in ("", "all") else root
    if not os.path.isdir(base):
      raise FileNotFoundError(f"image folder {base!r} does not exist")
    classes = sort_classes([d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d))])
    if not classes:
      raise ValueError(f"{base}: no class sub-folders (to caption or embed the images of a "
                       f"folder, a glob or a list file: --dataset=images:{base})")
    self.class_names = tuple(classes)
    self._prompt_names, self.imagenet = class_names_for(classes, class_names)
    self.files: List[str] = []
    self.labels: List[int] = []
    for label, name in enumerate(classes):
      directory = os.path.join(base, name)
      for file in sorted(os.listdir(directory)):
        if file.lower().endswith(EXTENSIONS):
          self.files.append(os.path.join(directory, file))
          self.labels.append(label)
    self.template, self.base = template, base
    self.templates = tuple(templates) if templates else (template,)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> Dict:
    with open(self.files[int(index)], "rb") as f:
      image = f.read()
    label = self.labels[int(index)]
    return {"image": image, "label": label,
            "captions": [t.format(self._prompt_names[label]) for t in self.templates],
            "scene": np.full(shapes.SCENE_LEN, -1, np.int32)}

  def prompt_names(self) -> Sequence[str]:
    """The class names for zero-shot prompts, in label order (see `class_names_for`)."""
    return tuple(self._prompt_names)

  def fingerprint(self) -> str:
    """"folder:<base>:<number of images>": identifies the dataset in an iterator's state."""
    return f"folder:{self.base}:{len(self)}"
