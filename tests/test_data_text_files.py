"""CSV / TSV / JSONL as spreadsheets and editors write them: UTF-8 with a byte-order mark
(Excel's "CSV UTF-8"), UTF-16 with one (Excel's "Unicode Text"), CRLF line ends; UTF-16 without
a mark is refused naming the encoding."""
import codecs
import json

import pytest

from coca_jax import tokenizers
from coca_jax.data import formats
from test_data_formats import all_captions, base_config, write_images

CAPTIONS = ["a café by the sea ☕", "two dogs, one ball", "naïve art"]
# name -> (codec, byte-order mark written first)
ENCODINGS = {"utf-8": ("utf-8", b""), "utf-8 BOM (Excel CSV UTF-8)": ("utf-8", codecs.BOM_UTF8),
             "utf-16 LE BOM (Excel Unicode Text)": ("utf-16-le", codecs.BOM_UTF16_LE),
             "utf-16 BE BOM": ("utf-16-be", codecs.BOM_UTF16_BE)}


def table(fmt):
  if fmt == "jsonl":
    return [json.dumps({"image": f"images/{i:03d}.jpg", "caption": c}, ensure_ascii=False)
            for i, c in enumerate(CAPTIONS)]
  sep = "\t" if fmt == "tsv" else ","
  return [f"filepath{sep}title"] + [f"images/{i:03d}.jpg{sep}\"{c}\"" if sep == "," else
                                    f"images/{i:03d}.jpg{sep}{c}" for i, c in enumerate(CAPTIONS)]


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_text_files_read_the_same_in_every_encoding(tmp_path, fmt, encoding, newline):
  codec, bom = ENCODINGS[encoding]
  path = tmp_path / f"pairs.{fmt}"
  path.write_bytes(bom + newline.join(table(fmt)).encode(codec) + newline.encode(codec))
  raws = list(formats.read_file(str(path), fmt, load_images=False))
  assert [r.get("error") for r in raws] == [None] * 3, raws
  assert [r["caption"] for r in raws] == CAPTIONS
  assert [r["image_path"] for r in raws] == [str(tmp_path / f"images/{i:03d}.jpg")
                                             for i in range(3)]


@pytest.mark.parametrize("codec,name", [("utf-16-le", "UTF-16"), ("utf-32-le", "UTF-32")])
def test_wide_encodings_without_a_mark_are_refused_by_name(tmp_path, codec, name):
  path = tmp_path / "pairs.csv"
  path.write_bytes("\n".join(table("csv")).encode(codec))
  with pytest.raises(ValueError, match=f"looks like {name} without a byte-order mark"):
    list(formats.read_file(str(path), "csv"))


def test_excel_csv_utf8_converts_end_to_end(tmp_path):
  write_images(tmp_path, 3)
  path = tmp_path / "pairs.csv"
  path.write_bytes(codecs.BOM_UTF8 + "\r\n".join(table("csv")).encode() + b"\r\n")
  spec = dict(name="excel", format="csv", path=str(path))
  got = all_captions(base_config(tmp_path), tokenizers.load("embedded"), spec)
  assert len(got) == 3
