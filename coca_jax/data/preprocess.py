"""Image preprocessing with PIL, matching open_clip's torchvision transforms.

Evaluation: resize the shorter side to `size` (bicubic), then centre crop. Training: random
resized crop (torchvision's sampling: area fraction in `scale`, log-uniform aspect `ratio`, ten
tries, then a centre crop), bicubic. Then float32 `(x / 255 - mean) / std`.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

NORMALIZATIONS = {
    "openai_clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # to [-1, 1]
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # to [0, 1]
}


def mean_std(normalization) -> Tuple[np.ndarray, np.ndarray]:
  """(mean, std) float32 arrays from a name in NORMALIZATIONS or a {"mean", "std"} mapping.

  "openai_clip" is OpenAI CLIP's statistics (open_clip's OPENAI_DATASET_MEAN / _STD),
  "imagenet" torchvision's ImageNet ones (open_clip's IMAGENET_MEAN / _STD). Each array is
  (3,), one value per RGB channel in [0, 1] units. Raises ValueError for an unknown name.
  """
  if isinstance(normalization, str):
    if normalization not in NORMALIZATIONS:
      raise ValueError(f"unknown normalization {normalization!r}: {sorted(NORMALIZATIONS)} or "
                       "dict(mean=..., std=...)")
    mean, std = NORMALIZATIONS[normalization]
  else:
    mean, std = normalization["mean"], normalization["std"]
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
  """Resizes (bicubic) so that the shorter side is `size`; the longer becomes
  int(size * long / short), at least 1, as torchvision's `Resize(size)` computes it. An image
  already that size is returned as it is.

  Args:
    image: a PIL image, e.g. the RGB one of `records.open_image` ((H, W, 3) uint8 as an array).
    size: the new shorter side, in pixels.
  """
  w, h = image.size
  if w <= h:
    new = (size, max(1, int(size * h / w)))
  else:
    new = (max(1, int(size * w / h)), size)
  return image.resize(new, Image.BICUBIC) if new != (w, h) else image


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """The central `size` x `size` pixels, offsets rounded as torchvision's `center_crop` does
  (int(round((w - size) / 2))); a side shorter than `size` is first padded with black around
  the image, as torchvision pads.

  Args:
    image: a PIL image, e.g. RGB ((H, W, 3) uint8 as an array).
    size: the crop's side, in pixels.
  """
  w, h = image.size
  if w < size or h < size:  # only after rounding; pad like torchvision would
    padded = Image.new(image.mode, (max(w, size), max(h, size)))
    padded.paste(image, ((padded.width - w) // 2, (padded.height - h) // 2))
    image, (w, h) = padded, padded.size
  left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def crop_box(width: int, height: int, rng: np.random.Generator, scale: Sequence[float],
             ratio: Sequence[float]) -> Tuple[int, int, int, int]:
  """(left, top, w, h) of a random resized crop, sampled as torchvision does."""
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def preprocess_image(image: Union[np.ndarray, Image.Image], size: int,
                     rng: Optional[np.random.Generator] = None, *,
                     scale: Sequence[float] = (0.9, 1.0),
                     ratio: Sequence[float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """uint8 (size, size, 3): random resized crop when `rng` is given, else resize + centre crop."""
  if not isinstance(image, Image.Image):
    image = Image.fromarray(image)
  if rng is None:
    image = center_crop(resize_shorter_side(image, size), size)
  else:
    left, top, w, h = crop_box(image.width, image.height, rng, scale, ratio)
    image = image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
  return np.asarray(image)


def normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """float32 (H, W, 3): `(image / 255 - mean) / std` per channel, as torchvision's ToTensor
  then Normalize (but channels last).

  Args:
    image: (H, W, 3) uint8, e.g. from `preprocess_image`.
    mean, std: float32 (3,) per-channel statistics in [0, 1] units, e.g. from `mean_std`.
  """
  return (image.astype(np.float32) / 255.0 - mean) / std
