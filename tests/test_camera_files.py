"""Photos as cameras store them: EXIF orientations 1-8 applied and non-sRGB colour profiles
converted wherever images are decoded, and baked in when own files are converted."""
import io
import struct

import numpy as np
from PIL import Image, ImageCms
import pytest

from coca_jax.data import local, pipeline, preprocess, records

ORIENTATION = 0x0112


def _block_image() -> np.ndarray:
  """(16, 24, 3) uint8 of flat 8x8 blocks (JPEG-friendly), no two blocks alike, no symmetry."""
  colours = np.array([[(250, 20, 20), (20, 250, 20), (20, 20, 250)],
                      [(240, 240, 20), (20, 240, 240), (120, 60, 10)]], np.uint8)
  return np.repeat(np.repeat(colours, 8, axis=0), 8, axis=1)


# How a viewer shows stored pixels, from the EXIF/TIFF definition of each value (where the
# stored 0th row and 0th column lie in the picture), written with NumPy, not PIL.
SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],             # row 0 top, column 0 right
    3: lambda a: a[::-1, ::-1],          # row 0 bottom, column 0 right
    4: lambda a: a[::-1],                # row 0 bottom, column 0 left
    5: lambda a: a.transpose(1, 0, 2),   # row 0 left, column 0 top
    6: lambda a: np.rot90(a, -1),        # row 0 right, column 0 top (phone held upright)
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # row 0 right, column 0 bottom
    8: lambda a: np.rot90(a, 1),         # row 0 left, column 0 bottom
}


def jpeg_with_orientation(stored: np.ndarray, orientation: int) -> bytes:
  exif = Image.Exif()
  exif[ORIENTATION] = orientation
  out = io.BytesIO()
  Image.fromarray(stored).save(out, format="JPEG", quality=98, subsampling=0,
                              exif=exif.tobytes())
  return out.getvalue()


def assert_close(decoded, expected, centres_only=False):
  """Equal up to JPEG's error; `centres_only`: at the centre of each 8x8 block (a re-encoded
  JPEG with 4:2:0 chroma blurs colours across block edges)."""
  assert decoded.shape == expected.shape
  if centres_only:
    decoded, expected = decoded[3::8, 3::8], expected[3::8, 3::8]
  assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 12


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decoding_applies_exif_orientation(orientation):
  stored = _block_image()
  blob = jpeg_with_orientation(stored, orientation)
  assert_close(records.decode_image(blob), SHOWN[orientation](stored))
  # Reduced-scale JPEG decoding (training's fast path) turns the same way.
  assert_close(records.decode_image(blob, min_size=8), SHOWN[orientation](stored))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_conversion_bakes_the_orientation_in(orientation):
  stored = _block_image()
  blob = jpeg_with_orientation(stored, orientation)
  out = local.encode_record({"image": blob, "caption": "x", "key": "k"})["image"]
  image = Image.open(io.BytesIO(out))
  assert image.getexif().get(ORIENTATION, 1) == 1
  # Any decoder (here PIL without EXIF handling) now sees the picture upright.
  assert_close(np.asarray(image.convert("RGB")), SHOWN[orientation](stored), centres_only=True)
  if orientation == 1:
    assert out == blob  # nothing to fix: the original bytes are kept


def test_pipeline_and_folder_reads_are_upright(tmp_path):
  """Training / evaluation examples and image folders decode through the same path."""
  from coca_jax import tokenizers  # pylint: disable=g-import-not-at-top
  from coca_jax.data.folder import FolderSource  # pylint: disable=g-import-not-at-top
  stored = _block_image()
  (tmp_path / "cat").mkdir()
  (tmp_path / "cat" / "phone.jpg").write_bytes(jpeg_with_orientation(stored, 6))
  source = FolderSource(str(tmp_path))
  make = pipeline.ExampleMaker(image_size=16, text_length=8, tokenizer=tokenizers.load(
      "embedded"), mean=np.zeros(3, np.float32), std=np.ones(3, np.float32))
  example = make(source[0], None)
  upright = preprocess.preprocess_image(Image.fromarray(SHOWN[6](stored)), 16, None)
  expected = np.asarray(upright, np.float32) / 255
  assert np.abs(example["images"] - expected).max() < 0.06


def linear_rgb_profile() -> bytes:
  """A minimal ICC v2 display profile: sRGB's primaries (D50-adapted) with linear (gamma 1)
  curves. Pixels stored in it convert to sRGB with the sRGB transfer function."""
  def s15f16(*values):
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)
  desc_text = b"Linear RGB (test)\0"
  tags = [
      (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(desc_text)) + desc_text
       + bytes(4) + bytes(4) + bytes(2) + bytes(1) + bytes(67)),
      (b"wtpt", b"XYZ " + bytes(4) + s15f16(0.9642, 1.0, 0.8249)),
      (b"rXYZ", b"XYZ " + bytes(4) + s15f16(0.4361, 0.2225, 0.0139)),
      (b"gXYZ", b"XYZ " + bytes(4) + s15f16(0.3851, 0.7169, 0.0971)),
      (b"bXYZ", b"XYZ " + bytes(4) + s15f16(0.1431, 0.0606, 0.7141)),
      (b"rTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0100) + bytes(2)),
  ]
  tags += [(b"gTRC", tags[-1][1]), (b"bTRC", tags[-1][1]),
           (b"cprt", b"text" + bytes(4) + b"none\0" + bytes(3))]
  table_size = 4 + 12 * len(tags)
  offset, table, body = 128 + table_size, b"", b""
  for signature, data in tags:
    data += bytes(-len(data) % 4)
    table += signature + struct.pack(">II", offset + len(body), len(data))
    body += data
  size = 128 + table_size + len(body)
  header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntr"
            + b"RGB " + b"XYZ " + bytes(12) + b"acsp" + bytes(4) + bytes(4) + bytes(8)
            + bytes(8) + bytes(4) + s15f16(0.9642, 1.0, 0.8249) + bytes(4) + bytes(44))
  assert len(header) == 128
  return header + struct.pack(">I", len(tags)) + table + body


def test_colour_profiles_are_converted_to_srgb():
  profile = linear_rgb_profile()
  assert "Linear RGB" in ImageCms.getProfileDescription(
      ImageCms.ImageCmsProfile(io.BytesIO(profile)))
  # Linear 0.5 is sRGB's 0.7354 (IEC 61966-2-1: 1.055 * 0.5 ** (1 / 2.4) - 0.055) = 187.5 / 255.
  grey = Image.new("RGB", (16, 16), (128, 128, 128))
  for fmt in ("PNG", "JPEG"):
    out = io.BytesIO()
    grey.save(out, format=fmt, icc_profile=profile, **({"quality": 98} if fmt == "JPEG" else {}))
    decoded = records.decode_image(out.getvalue())
    assert np.abs(decoded.astype(float) - 188).max() <= 3, (fmt, decoded[0, 0])
    converted = local.encode_record({"image": out.getvalue(), "caption": "x", "key": "k"})
    plain = Image.open(io.BytesIO(converted["image"]))
    assert records.icc_profile_name(plain) is None
    assert np.abs(np.asarray(plain.convert("RGB")).astype(float) - 188).max() <= 3
  # An sRGB profile, or none, leaves the pixels as stored.
  srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
  out = io.BytesIO()
  grey.save(out, format="PNG", icc_profile=srgb)
  np.testing.assert_array_equal(records.decode_image(out.getvalue()), np.asarray(grey))


def test_unreadable_colour_profile_is_ignored():
  out = io.BytesIO()
  Image.new("RGB", (8, 8), (10, 200, 30)).save(out, format="PNG", icc_profile=b"not a profile")
  np.testing.assert_array_equal(records.decode_image(out.getvalue())[0, 0], (10, 200, 30))
