"""Dataset specs, and random access to a split of one as plain records.

A dataset spec (a dict or ConfigDict; unknown fields are refused):
  name        TFDS name ("coca_shapes", "coca_shapes/small", "coco_captions", ...), or the name
              under which people's own files are converted (then `format` and `path` are set)
  split       "train", "validation", "test[:10%]", ...
  format      "tfds" (default), csv | tsv | jsonl | webdataset | tfrecord (see formats.py), or
              "folder": PATH/<class>/<images> (PATH/<split>/<class>/... when that exists) as
              labelled image-text pairs, captions from `templates` ("clip" by default) filled
              with the class names (coca_jax/evals/folder.py: numbered, WordNet-id folders)
  path        those files: a file, a directory, a glob or a {000..099} range (local or gs://);
              with format "tfds": a prepared dataset's directory (as printed by data.convert)
  stream      False: convert the files into a TFDS dataset on first use (random access, exact
              resume with any process count); True: read shards in place, shard by shard
              (web scale; resume needs the same process count)
  image_key   image feature or column ("image"; csv/tsv: "filepath"; webdataset/tfrecord: "jpg")
  text_key    caption feature or column; nested TFDS features with "/" ("captions/text" for
              coco_captions); a list of captions gives one chosen at random per read
  separator   csv/tsv column separator
  label_key   a class label feature ("label"); with `templates`, a classification dataset becomes
              image-text pairs: caption = a template (chosen at random) filled with the class name
  templates   a list of "{}" templates, or a name: "coca_shapes", "photo", "clip"
  weight      share of each batch in a mixture
  caption_weight  weight of this dataset's examples in the caption loss (default 1). 0: they
              train the contrastive loss only, e.g. class names in prompt templates, so that the
              captioner learns from real captions alone. The caption loss is the weighted mean
              over caption tokens; batches carry "caption_weight" (float32 (B,)) only when some
              dataset sets a weight other than 1
  data_dir    TFDS data dir for this dataset (default: config.data.data_dir)
  max_side    conversion only: shorter image side kept at most this (pixels)

A record is {"image": encoded bytes or uint8 array, "captions": [str or bytes, ...],
"label": int (-1 when none), "scene": int32 (12,) (coca_shapes only; -1 otherwise)}.
"""
import dataclasses
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from coca_jax.data import embedded, formats, local, records, shapes

TEMPLATES = {
    "coca_shapes": shapes.ZERO_SHOT_TEMPLATES,
    "photo": ("a photo of a {}.",),
    "clip": ("a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.",
             "a photo of the small {}.", "a close-up photo of a {}.", "a bright photo of a {}.",
             "a cropped photo of the {}.", "itap of a {}.", "art of the {}.", "a drawing of a {}."),
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset of a config (see the module docstring)."""
  name: str = embedded.NAME
  split: str = "train"
  format: str = "tfds"
  path: Optional[str] = None
  stream: bool = False
  image_key: Optional[str] = None
  text_key: Optional[str] = None
  separator: Optional[str] = None
  label_key: Optional[str] = None
  templates: Any = None
  weight: float = 1.0
  caption_weight: float = 1.0
  data_dir: Optional[str] = None
  max_side: int = local.MAX_SIDE

  @classmethod
  def parse(cls, spec) -> "DatasetSpec":
    if isinstance(spec, cls):
      return spec
    spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
    unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown dataset spec fields {sorted(unknown)}; known: "
                       f"{[f.name for f in dataclasses.fields(cls)]}")
    known = ("tfds", "folder") + formats.FORMATS
    if spec.get("format", "tfds") not in known:
      raise ValueError(f"format {spec['format']!r}: one of {known}")
    if spec.get("format") == "folder" and (spec.get("stream") or not spec.get("path")):
      raise ValueError(f"{spec.get('name')}: format 'folder' needs a path (the folder of class "
                       "sub-folders) and reads it in place (stream=False)")
    caption_weight = spec.get("caption_weight", 1.0)
    if not isinstance(caption_weight, (int, float)) or not 0 <= caption_weight < float("inf"):
      raise ValueError(f"{spec.get('name')}: caption_weight {caption_weight!r}: a finite number "
                       ">= 0 (0: no caption loss on this dataset's examples)")
    if isinstance(spec.get("templates"), list):
      spec["templates"] = tuple(spec["templates"])
    return cls(**spec)

  def template_list(self) -> Optional[Sequence[str]]:
    if self.templates is None or not isinstance(self.templates, str):
      return self.templates
    if self.templates not in TEMPLATES:
      raise ValueError(f"templates {self.templates!r}: a list or one of {sorted(TEMPLATES)}")
    return TEMPLATES[self.templates]


def caption_weighted(specs: Sequence[DatasetSpec]) -> bool:
  """Whether batches of these datasets carry per-example caption-loss weights."""
  return any(spec.caption_weight != 1.0 for spec in specs)


def parse_specs(datasets) -> List[DatasetSpec]:
  """A single spec, a list of specs, or a mapping of names to specs (a mixture)."""
  if hasattr(datasets, "to_dict"):
    datasets = datasets.to_dict()
  if isinstance(datasets, (DatasetSpec, str)):
    datasets = [datasets if isinstance(datasets, DatasetSpec) else {"name": datasets}]
  elif isinstance(datasets, dict):  # one spec, or name -> spec
    mixture = datasets and all(isinstance(v, (dict, DatasetSpec)) for v in datasets.values())
    datasets = list(datasets.values()) if mixture else [datasets]
  return [DatasetSpec.parse(d) for d in datasets]


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
    return f"{self.builder.info.full_name}:{self.split}:{len(self)}"


def open_source(spec, data_dir: Optional[str] = None, split: Optional[str] = None,
                reprepare: bool = False):
  """Random access to one split of a dataset spec: a `Source`, or for format "folder" a
  `coca_jax.evals.folder.FolderSource` (same record layout, read in place)."""
  spec = DatasetSpec.parse(spec)
  if spec.format != "folder":
    return Source(spec, data_dir, split, reprepare)
  from coca_jax.evals.folder import FolderSource  # pylint: disable=import-outside-toplevel
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
