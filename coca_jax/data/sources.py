"""Random access to a split of a dataset (a `spec.DatasetSpec`) as plain records.

A record is {"image": encoded bytes or uint8 array, "captions": [str or bytes, ...],
"label": int (-1 when none), "scene": int32 (12,) (coca_shapes only; -1 otherwise)}.
"""
import dataclasses
import os
import re
from typing import Dict, Iterator, Optional

import numpy as np
import tensorflow_datasets as tfds

from coca_jax.data import embedded, formats, local, records, shapes
from coca_jax.data.spec import TEMPLATES, DatasetSpec



def _builder(spec: DatasetSpec, data_dir: Optional[str],
             reprepare: bool = False) -> tfds.core.DatasetBuilder:
  data_dir = spec.data_dir or data_dir
  if spec.format != "tfds":
    # One converted dataset per (name, split): "mine_train", "mine_validation".
    split = re.split(r"[\[+]", spec.split)[0]
    return local.prepare(dataclasses.asdict(spec) | {"name": f"{spec.name}_{split}",
                                                      "split": split}, data_dir, reprepare)
  if spec.path:  # a prepared TFDS dataset's directory, e.g. written by data.convert
    return tfds.builder_from_directory(spec.path)
  name, _, config = spec.name.partition("/")
  if name == embedded.NAME:
    return embedded.prepare(data_dir, config or "default")
  return tfds.builder(spec.name, data_dir=data_dir)


def _default_keys(spec: DatasetSpec, builder) -> Dict[str, Optional[str]]:
  features = builder.info.features
  if spec.format != "tfds":
    return {"image": "image", "text": "captions", "label": None}
  text = spec.text_key or next((k for k in ("captions", "caption", "text") if k in features),
                               None)
  label = spec.label_key or ("label" if "label" in features else None)
  if text is None and spec.templates is None:
    raise ValueError(f"{spec.name}: no text feature among {list(features)}: set text_key (or "
                     "label_key and templates for a classification dataset)")
  return {"image": spec.image_key or "image", "text": text, "label": label}


def _nested(keys: str, value):
  """{"a": {"b": value}} from "a/b"."""
  for key in reversed(keys.split("/")):
    value = {key: value}
  return value


def _get(record, keys: str):
  for key in keys.split("/"):
    record = record[key]
  return record


class Source:
  """Random access to one split of a dataset spec, as records (see the module docstring)."""

  def __init__(self, spec: DatasetSpec, data_dir: Optional[str] = None,
               split: Optional[str] = None, reprepare: bool = False):
    """`reprepare`: convert people's own files again even if a prepared copy exists."""
    self.spec = spec
    self.split = split or spec.split
    self.builder = _builder(spec, data_dir, reprepare)
    self.keys = _default_keys(spec, self.builder)
    try:
      self.data = self.builder.as_data_source(
          self.split, decoders=_nested(self.keys["image"], tfds.decode.SkipDecoding()))
    except Exception as e:  # pylint: disable=broad-except  (TFDS raises several kinds)
      if not self.builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {spec.name!r} is not prepared in {self.builder.data_dir!r}; nothing "
            f"is downloaded at run time: prepare it first with `tfds build {spec.name} "
            "--data_dir=... --file_format=array_record`") from e
      raise ValueError(
          f"{spec.name}: no random access to split {self.split!r} ({e}). A dataset stored as "
          "TFRecord can be converted with `tfds convert_format --dataset_dir=... "
          "--out_file_format=array_record`") from e
    self.templates = spec.template_list()
    self.class_names = None
    if self.keys["label"]:
      label = _get(self.builder.info.features, self.keys["label"])
      self.class_names = tuple(getattr(label, "names", ()) or ())
    if self.templates and not self.class_names:
      raise ValueError(f"{spec.name}: templates need a class label feature with names")

  def __len__(self) -> int:
    return len(self.data)

  def __getitem__(self, index: int) -> Dict:
    record = self.data[int(index)]
    label = int(_get(record, self.keys["label"])) if self.keys["label"] else -1
    if self.templates:
      captions = [t.format(self.class_names[label]) for t in self.templates]
    else:
      captions = _get(record, self.keys["text"])
      if isinstance(captions, (str, bytes)) or np.ndim(captions) == 0:
        captions = [captions]
      captions = list(captions)
    scene = record.get("scene") if self.builder.info.name == embedded.NAME else None
    return {"image": _get(record, self.keys["image"]), "captions": captions, "label": label,
            "scene": np.full(shapes.SCENE_LEN, -1, np.int32) if scene is None
            else np.asarray(scene, np.int32)}

  def fingerprint(self) -> str:
    """"<TFDS full name>:<split>:<examples>", e.g. "coca_shapes/small/1.0.0:train:512"; kept in
    the train iterator's state, so that a resume on other data is refused."""
    return f"{self.builder.info.full_name}:{self.split}:{len(self)}"


def open_source(spec, data_dir: Optional[str] = None, split: Optional[str] = None,
                reprepare: bool = False):
  """Random access to one split of a dataset spec: a `Source`, or for format "folder" a
  `coca_jax.data.folder.FolderSource` (same record layout, read in place)."""
  spec = DatasetSpec.parse(spec)
  if spec.format != "folder":
    return Source(spec, data_dir, split, reprepare)
  from coca_jax.data.folder import FolderSource  # pylint: disable=import-outside-toplevel
  split = split or spec.split
  if not os.path.isdir(os.path.join(spec.path, split)):
    split = "all"  # the folder itself holds the classes
  return FolderSource(spec.path, split, templates=spec.template_list() or TEMPLATES["clip"])


def iter_captions(spec, data_dir: Optional[str] = None) -> Iterator[str]:
  """Every clean caption of a dataset split (files are read in place, without conversion)."""
  spec = DatasetSpec.parse(spec)
  if spec.format in ("tfds", "folder"):
    source = open_source(spec, data_dir)
    raws = (c for i in range(len(source)) for c in source[i]["captions"])
  else:
    raws = (caption for path in formats.expand_paths(spec.path, spec.format)
            for raw in formats.read_file(path, spec.format, image_key=spec.image_key,
                                         text_key=spec.text_key, separator=spec.separator,
                                         load_images=False)
            if "error" not in raw for caption in formats.captions_of(raw))
  for raw in raws:
    try:
      yield records.clean_caption(raw)
    except records.BadRecord:
      continue
