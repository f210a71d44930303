"""Bad records: decode what can be decoded, reject the rest with a reason, and count.

Images: PIL decodes by content, not by file name (a PNG saved as .jpg is fine); CMYK, grayscale,
palette, RGBA (over white), 16-bit and float images become 8-bit RGB; an animated image gives its
first frame; large JPEGs are decoded at reduced scale (`draft`) when only a small picture is
needed. Truncated, empty or undecodable files raise `BadRecord`.

Camera files: the picture a viewer shows, not the stored pixel grid. The EXIF Orientation tag
(values 2-8: a phone photo stored sideways or mirrored) is applied (`ImageOps.exif_transpose`),
and an embedded ICC colour profile other than sRGB (Display P3, Adobe RGB, a CMYK press
profile) is converted to sRGB (`ImageCms`, perceptual intent), the space open_clip's and this
project's models were trained in; a profile that cannot be read is ignored (pixels as stored).

Captions: bytes must be valid UTF-8; whitespace is squeezed, control characters dropped, text
cut at `max_chars` on a word boundary; an empty caption raises `BadRecord`.

`BadRecordCounts` counts reasons (thread-safe): during preparation, records are dropped and
counted; at read time a failing record is replaced (training) or masked (evaluation), and the
example carries the reasons (field `BAD`, ";"-joined) to the consumer, which counts them when it
takes the batch: counts follow the batches consumed, not the read-ahead.
"""
import collections
import functools
import io
import threading
import warnings
from typing import Dict, Optional

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps
import regex

# A 48-megapixel photo is fine; PIL refuses beyond twice this as a decompression bomb.
Image.MAX_IMAGE_PIXELS = 100_000_000
_SURROGATE, _CONTROL = regex.compile(r"\p{Cs}"), regex.compile(r"\p{Cc}")
BAD = "bad_records"  # example field: reasons of the records it replaced, ";"-joined


class BadRecord(ValueError):
  """A record that cannot be used; `reason` is a short counter name."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


class BadRecordCounts:
  """Thread-safe counts of bad records by reason."""

  def __init__(self):
    self._counts = collections.Counter()
    self._lock = threading.Lock()

  def add(self, reason: str, n: int = 1):
    """Counts `n` more records rejected for `reason`."""
    with self._lock:
      self._counts[reason] += n

  def add_joined(self, joined):
    """Counts reasons carried by examples as ";"-joined strings (an array of them: a batch)."""
    for text in np.asarray(joined).reshape(-1):
      for reason in str(text).split(";"):
        if reason:
          self.add(reason)

  def as_dict(self) -> Dict[str, int]:
    """The counts so far, {reason: n}, sorted by reason."""
    with self._lock:
      return dict(sorted(self._counts.items()))

  def total(self) -> int:
    """Bad records counted so far, all reasons together."""
    with self._lock:
      return sum(self._counts.values())


def reason_counts(reasons, details: Optional[Dict[str, str]] = None) -> str:
  """"reason: n (first detail), ..." for an error message, most frequent first."""
  counts = collections.Counter(reasons)
  details = details or {}
  return ", ".join(f"{r}: {n}" + (f" ({details[r]})" if r in details else "")
                   for r, n in counts.most_common())


def _to_rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB from any PIL mode; transparency is composited over white."""
  if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or values.max(initial=0) > 255:
      values = values / 257.0  # 16-bit range to 8-bit
    elif image.mode == "F" and values.max(initial=0) <= 1.0:
      values = values * 255.0
    image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    image = Image.alpha_composite(background, image)
  return image.convert("RGB") if image.mode != "RGB" else image


_SRGB = ImageCms.createProfile("sRGB")
# Colour-managed modes; others (palette, 16-bit, float) keep their values.
_CMS_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}


def icc_profile_name(image: Image.Image) -> Optional[str]:
  """The description of an embedded ICC profile other than sRGB, else None.

  A profile whose description holds "srgb" (case and spaces ignored) is sRGB; a missing or
  unreadable profile also gives None. `image`: a PIL image as opened (any mode; an RGB one is
  (H, W, 3) uint8 as an array).
  """
  icc = image.info.get("icc_profile")
  return _non_srgb_name(icc) if icc else None


@functools.lru_cache(maxsize=64)
def _non_srgb_name(icc: bytes) -> Optional[str]:
  # Cached: a collection's photos carry a handful of distinct profiles, parsed once each.
  try:
    name = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
  except (OSError, ImageCms.PyCMSError):
    return None  # unreadable: ignored
  return None if "srgb" in name.lower().replace(" ", "") else name or "unnamed profile"


@functools.lru_cache(maxsize=64)
def _to_srgb_transform(icc: bytes, mode: str):
  """The colour transform from a profile to sRGB for one PIL mode (built once per profile)."""
  source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
  return ImageCms.buildTransform(source, _SRGB, mode, _CMS_MODES[mode],
                                 renderingIntent=ImageCms.Intent.PERCEPTUAL)


def _to_srgb(image: Image.Image) -> Image.Image:
  """Pixels in an embedded non-sRGB ICC profile -> sRGB (perceptual rendering intent)."""
  if image.mode not in _CMS_MODES or not icc_profile_name(image):
    return image
  try:
    return ImageCms.applyTransform(
        image, _to_srgb_transform(image.info["icc_profile"], image.mode))
  except (OSError, ValueError, ImageCms.PyCMSError):
    return image  # a profile that does not fit these pixels: pixels as stored


def is_upright_srgb(image: Image.Image) -> bool:
  """No EXIF orientation to apply and no colour profile to convert: the stored pixels are the
  picture (so encoded bytes may be kept as they are).

  `image`: a PIL image as opened, before `ImageOps.exif_transpose` (an RGB one is (H, W, 3)
  uint8 as an array).
  """
  return image.getexif().get(ExifTags.Base.Orientation, 1) == 1 and (
      icc_profile_name(image) is None)


def open_image(data, min_size: Optional[int] = None) -> Image.Image:
  """An 8-bit RGB PIL image from encoded bytes (or a uint8 array, checked and converted).

  `min_size`: the picture will be resized to at least this on its shorter side, so a JPEG may be
  decoded at a reduced scale that keeps at least this many pixels.
  """
  if isinstance(data, np.ndarray):
    return Image.fromarray(_array_to_rgb(data))
  if not data:
    raise BadRecord("image_empty")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # PIL warns about odd metadata; the pixels decide
      image = Image.open(io.BytesIO(data))
      if min_size and image.format == "JPEG":
        w, h = image.size
        scale = min_size / min(w, h)
        image.draft("RGB", (max(1, int(w * scale) + 1), max(1, int(h * scale) + 1)))
      image.seek(0)  # first frame of an animation
      image.load()
      image = _to_rgb(_to_srgb(ImageOps.exif_transpose(image)))
  except Image.DecompressionBombError as e:
    raise BadRecord("image_too_large", str(e)) from e
  except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as e:
    reason = "image_truncated" if "truncated" in str(e).lower() else "image_undecodable"
    raise BadRecord(reason, str(e)) from e
  if min(image.size) < 1:
    raise BadRecord("image_undecodable", f"size {image.size}")
  return image


def decode_image(data, min_size: Optional[int] = None) -> np.ndarray:
  """uint8 (H, W, 3): `open_image` as an array."""
  return np.asarray(open_image(data, min_size))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
    raise BadRecord("image_undecodable", f"array of shape {array.shape}")
  if array.dtype != np.uint8:
    raise BadRecord("image_undecodable", f"array of dtype {array.dtype}")
  if array.shape[-1] == 1:
    return np.repeat(array, 3, axis=-1)
  if array.shape[-1] == 4:
    return np.asarray(_to_rgb(Image.fromarray(array, "RGBA")))
  return array


def clean_caption(text, max_chars: int = 1000) -> str:
  """Readable single-line text: valid UTF-8, no control characters, squeezed whitespace.

  Control characters become spaces, then whitespace runs one space. Text longer than
  `max_chars` is cut at its last space within max_chars + 1 characters when that keeps more than
  half of `max_chars`, else at `max_chars`, and trailing spaces are dropped.

  Args:
    text: one caption: a str, bytes, or a numpy bytes scalar (an element of an (N,) captions
      array of dtype object or bytes_); bytes are decoded as UTF-8.
    max_chars: the longest caption kept, in characters.

  Raises:
    BadRecord: "caption_invalid_utf8" (bytes that are not UTF-8, or surrogates in a str) or
      "caption_empty" (nothing left).
  """
  if isinstance(text, (bytes, np.bytes_)):
    try:
      text = bytes(text).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadRecord("caption_invalid_utf8", str(e)) from e
  text = str(text)
  if not (text.isascii() and text.isprintable()):
    if _SURROGATE.search(text):  # bytes smuggled in by surrogateescape
      raise BadRecord("caption_invalid_utf8")
    text = _CONTROL.sub(" ", text)
  text = " ".join(text.split())
  if len(text) > max_chars:
    cut = text[:max_chars + 1].rfind(" ")
    text = text[:cut if cut > max_chars // 2 else max_chars].rstrip()
  if not text:
    raise BadRecord("caption_empty")
  return text
