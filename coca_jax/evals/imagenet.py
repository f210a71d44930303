"""ImageNet-1k zero-shot prompts: CLIP's curated class names (readable, e.g. "tench",
"goldfish", in the order of TFDS's sorted WordNet ids) and CLIP's 80 prompt templates; the
WordNet ids themselves (`imagenet_wnids.txt`, TFDS's `imagenet2012/labels.txt`), which name the
class folders of ImageNet's train and validation archives.

Both lists are those of CLIP's ImageNet prompt-engineering notebook (the same lists open_clip
ships as `IMAGENET_CLASSNAMES` / `OPENAI_IMAGENET_TEMPLATES`; a test checks them against it).
They live as text files in data/, one entry per line.
"""
import functools
import re
from typing import Sequence, Tuple

from etils import epath

NUM_CLASSES = 1000
# TFDS datasets whose labels are ImageNet-1k's 1000 classes in sorted-WordNet-id order.
DATASETS = ("imagenet2012", "imagenet_v2", "imagenet2012_real", "imagenet_sketch",
            "imagenet2012_corrupted", "imagenet2012_multilabel")
_WNID = re.compile(r"^n\d{8}$")


def _lines(name: str) -> Tuple[str, ...]:
  text = (epath.resource_path("coca_jax.evals") / "data" / name).read_text()
  return tuple(line for line in text.splitlines() if line)


@functools.cache
def class_names() -> Tuple[str, ...]:
  """CLIP's 1000 curated ImageNet-1k class names ("tench", "goldfish", ...), in class-index
  order (data/imagenet_classes.txt)."""
  return _lines("imagenet_classes.txt")


@functools.cache
def wnids() -> Tuple[str, ...]:
  """ImageNet-1k's WordNet ids in class-index order (sorted; TFDS's imagenet2012 labels)."""
  return _lines("imagenet_wnids.txt")


def is_wnid(name: str) -> bool:
  """Whether `name` is a WordNet id: "n" and eight digits, e.g. "n01440764"."""
  return bool(_WNID.match(name))


@functools.cache
def templates() -> Tuple[str, ...]:
  """CLIP's 80 ImageNet prompt templates ("a bad photo of a {}.", ...), each with one "{}" for
  the class name (data/imagenet_templates.txt)."""
  return _lines("imagenet_templates.txt")


def is_imagenet(dataset_name: str, label_names: Sequence[str] = ()) -> bool:
  """ImageNet-1k labels: a known dataset, or 1000 labels that are WordNet ids."""
  if dataset_name.split("/")[0].split(":")[0] in DATASETS:
    return True
  return len(label_names) == NUM_CLASSES and all(_WNID.match(n) for n in label_names)
