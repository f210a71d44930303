"""Bad records: odd images decoded right, broken ones rejected with a reason and counted at
preparation; failures at read time replaced deterministically (training) or masked (eval)."""
import io
import json

import numpy as np
from PIL import Image
import pytest

from coca_jax import data, tokenizers
from coca_jax.data import formats, local, records

RED = (220, 30, 30)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  out = io.BytesIO()
  image.save(out, format=fmt, **kwargs)
  return out.getvalue()


def odd_images():
  """name -> (bytes, expected RGB of the centre pixel or None, expected (h, w))."""
  red = Image.new("RGB", (40, 30), RED)
  rgba = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent: white
  palette = Image.new("P", (10, 10), 1)
  palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
  palette.info["transparency"] = 0
  sixteen = Image.fromarray(np.full((12, 16), 32896, np.uint16))  # 0x8080 -> 128
  frames = [Image.new("RGB", (8, 8), c) for c in (RED, (0, 0, 255))]
  gif = io.BytesIO()
  frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
  return {
      "jpeg": (encode(red, "JPEG", quality=95), RED, (30, 40)),
      "png_named_jpg": (encode(red, "PNG"), RED, (30, 40)),
      "cmyk": (encode(red.convert("CMYK"), "JPEG", quality=95), RED, (30, 40)),
      "grayscale": (encode(Image.new("L", (9, 7), 77), "PNG"), (77, 77, 77), (7, 9)),
      "bilevel": (encode(Image.new("1", (9, 7), 1), "PNG"), (255, 255, 255), (7, 9)),
      "rgba": (encode(rgba, "PNG"), (255, 255, 255), (20, 20)),
      "palette_transparency": (encode(palette, "PNG"), (0, 200, 0), (10, 10)),
      "sixteen_bit": (encode(sixteen, "PNG"), (128, 128, 128), (12, 16)),
      "animated_gif": (gif.getvalue(), RED, (8, 8)),
      "one_pixel": (encode(Image.new("RGB", (1, 1), RED), "PNG"), RED, (1, 1)),
      "webp": (encode(red, "WEBP", lossless=True), RED, (30, 40)),
  }


BROKEN = {
    "zero_bytes": (b"", "image_empty"),
    "truncated": (encode(Image.new("RGB", (64, 64), RED), "JPEG")[:300], "image_truncated"),
    "not_an_image": (b"<html>404 not found</html>", "image_undecodable"),
    "truncated_png": (encode(Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "PNG")[:500],
                      "image_truncated"),
}


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_odd_images_decode_to_rgb(name):
  blob, colour, size = odd_images()[name]
  image = records.decode_image(blob)
  assert image.dtype == np.uint8 and image.shape == (*size, 3)
  centre = image[size[0] // 2, size[1] // 2].astype(int)
  assert np.abs(centre - colour).max() <= 12, (name, centre)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_images_are_rejected_with_a_reason(name):
  blob, reason = BROKEN[name]
  with pytest.raises(records.BadRecord) as e:
    records.decode_image(blob)
  assert e.value.reason == reason


def test_huge_jpeg_decodes_small_and_fast():
  huge = encode(Image.new("RGB", (8000, 6000), RED), "JPEG", quality=80)
  image = records.decode_image(huge, min_size=224)
  assert min(image.shape[:2]) >= 224 and image.shape[0] <= 1000  # reduced-scale decode
  assert tuple(image[100, 100]) == pytest.approx(RED, abs=8)
  assert records.decode_image(huge).shape == (6000, 8000, 3)


def test_arrays_are_checked():
  assert records.decode_image(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
  assert records.decode_image(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
  with pytest.raises(records.BadRecord):
    records.decode_image(np.zeros((4, 5, 3), np.float32))
  with pytest.raises(records.BadRecord):
    records.decode_image(np.zeros((0, 5, 3), np.uint8))


def test_captions():
  clean = records.clean_caption
  assert clean("  a  red\tcircle\n ") == "a red circle"
  assert clean(b"caf\xc3\xa9 \xe6\x9d\xb1") == "café 東"
  assert clean("a\x00b\x07c") == "a b c"
  assert clean("emoji 👨‍👩‍👧") == "emoji 👨‍👩‍👧"  # zero-width joiners kept
  long = clean("word " * 2000, max_chars=1000)  # 10,000 characters
  assert len(long) <= 1000 and long.endswith("word")
  assert len(clean("x" * 10_000, max_chars=50)) == 50
  for empty in ("", "   \t\n ", b"", "\x00\x01"):
    with pytest.raises(records.BadRecord, match="caption_empty"):
      clean(empty)
  for invalid in (b"bad \xff\xfe bytes", "smuggled \udcff surrogate"):
    with pytest.raises(records.BadRecord, match="caption_invalid_utf8"):
      clean(invalid)


def write_collection(root):
  """A CSV with every kind of good and bad record; returns the expected counts."""
  (root / "img").mkdir()
  rows = []
  for name, (blob, _, _) in odd_images().items():
    (root / "img" / f"{name}.jpg").write_bytes(blob)  # every one named .jpg
    rows.append((f"img/{name}.jpg", f"a picture called {name}".encode()))
  for name, (blob, _) in BROKEN.items():
    (root / "img" / f"{name}.jpg").write_bytes(blob)
    rows.append((f"img/{name}.jpg", b"a broken picture"))
  rows += [("img/missing.jpg", b"a missing picture"), ("img/jpeg.jpg", b""),
           ("img/jpeg.jpg", b"   "), ("img/jpeg.jpg", b"caf\xff invalid"),
           ("img/jpeg.jpg", b"long " * 2000)]
  with open(root / "pairs.csv", "wb") as f:
    f.write(b"filepath,title\n")
    for path, caption in rows:
      f.write(path.encode() + b',"' + caption + b'"\n')
  # jpeg.jpg's five rows are one image with two usable captions (three are counted bad).
  return {"kept": len(odd_images()), "captions": len(odd_images()) + 1, "image_empty": 1,
          "image_truncated": 2,
          "image_undecodable": 1, "image_missing": 1, "caption_empty": 2,
          "caption_invalid_utf8": 1}


def test_preparation_filters_and_counts(tmp_path):
  expected = write_collection(tmp_path)
  builder = local.prepare(dict(name="messy", format="csv", path=str(tmp_path / "pairs.csv")),
                          str(tmp_path / "tfds"))
  report = local.bad_record_report(builder)["train"]
  assert report == {**expected, "dropped": sum(v for k, v in expected.items()
                                               if k not in ("kept", "captions"))}
  # Everything kept reads back as clean RGB and finite model inputs.
  cfg = dict(data_dir=str(tmp_path / "tfds"), image_size=16, text_length=12,
             train=dict(name="messy", format="csv", path=str(tmp_path / "pairs.csv")),
             eval=dict(name="messy", format="csv", path=str(tmp_path / "pairs.csv")))
  tok = tokenizers.load("embedded")
  it = data.build_eval_iterator(cfg, global_batch_size=4, process_index=0, process_count=1,
                                tokenizer=tok)
  batches = list(it)
  assert sum(b["mask"].sum() for b in batches) == expected["kept"]
  assert it.counts.total() == 0
  for b in batches:
    assert np.isfinite(b["images"]).all() and (b["text"][:, 0] == tok.bos_id).all()
  assert data.prepare(cfg) == {"image_text_files/messy_train/1.1.0": {"train": report}}


@pytest.fixture
def unfiltered(tmp_path, monkeypatch):
  """A converted dataset whose bad records were left in, so they fail at read time."""
  write_collection(tmp_path)
  monkeypatch.setattr(formats, "group_by_image", lambda raws: raws)  # one example per row
  monkeypatch.setattr(local, "encode_record", lambda raw, *a, **k: {
      "image": raw.get("image", b""),
      "captions": [c.encode("utf-8", "surrogateescape") for c in formats.captions_of(raw)]
                  if "caption" in raw else [b""]})
  spec = dict(name="raw", format="csv", path=str(tmp_path / "pairs.csv"))
  local.prepare({**spec, "name": "raw_train"}, str(tmp_path / "tfds"))
  return dict(data_dir=str(tmp_path / "tfds"), image_size=16, text_length=12, train=spec,
              eval=spec)


def test_read_failures_are_replaced_deterministically(unfiltered):
  tok = tokenizers.load("embedded")

  def run(count):
    iterators = [data.build_train_iterator(unfiltered, global_batch_size=8, seed=0,
                                           process_index=p, process_count=count, tokenizer=tok)
                 for p in range(count)]
    batches = [[next(it) for it in iterators] for _ in range(6)]  # 48 reads of 20 records
    return batches, iterators

  one, (it,) = run(1)
  stats = it.stats()
  assert stats["bad_records"] > 0 and stats["bad_records/image_undecodable"] > 0
  assert stats["bad_records/caption_empty"] > 0
  for (batch,) in one:
    assert batch["images"].shape == (8, 16, 16, 3) and np.isfinite(batch["images"]).all()
  two, iterators = run(2)
  for (a,), (p0, p1) in zip(one, two):  # same global batches with two processes
    merged = np.stack([p0["text"], p1["text"]], 1).reshape(8, -1)
    np.testing.assert_array_equal(a["text"], merged)
  assert sum(i.stats()["bad_records"] for i in iterators) == stats["bad_records"]


def test_eval_masks_read_failures(unfiltered):
  tok = tokenizers.load("embedded")
  it = data.build_eval_iterator(unfiltered, global_batch_size=8, process_index=0,
                                process_count=1, tokenizer=tok)
  batches = list(it)
  kept = sum(b["mask"].sum() for b in batches)
  assert kept == len(odd_images()) + 1 and it.counts.total() == 20 - kept  # 20 rows
  assert json.dumps(it.counts.as_dict())  # reportable
