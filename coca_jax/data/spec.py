"""Dataset specs: which data a config names, and how.

A dataset spec (a dict or ConfigDict; unknown fields are refused):
  name        TFDS name ("coca_shapes", "coca_shapes/small", "coco_captions", ...), or the name
              under which people's own files are converted (then `format` and `path` are set)
  split       "train", "validation", "test[:10%]", ...
  format      "tfds" (default), csv | tsv | jsonl | webdataset | tfrecord (see formats.py), or
              "folder": PATH/<class>/<images> (PATH/<split>/<class>/... when that exists) as
              labelled image-text pairs, captions from `templates` ("clip" by default) filled
              with the class names (coca_jax/data/folder.py: numbered, WordNet-id folders)
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
"""
import dataclasses
from typing import Any, List, Optional, Sequence

from coca_jax.data import embedded, formats, local, shapes

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
    """A spec from a dict or ConfigDict (missing fields take their defaults); a DatasetSpec is
    returned as it is, and a list of templates becomes a tuple.

    Raises:
      ValueError: unknown fields, an unknown format, format "folder" without a path or with
        stream=True, or a caption_weight that is not a finite number >= 0.
    """
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
    """The "{}" templates: None when unset, a name looked up in TEMPLATES, else as given.
    Raises ValueError for an unknown name."""
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
