"""Several captions per image from people's own files (repeated CSV/TSV rows, JSONL caption
lists, webdataset .json caption lists) become one image with all its captions; retrieval
counts images, not rows, and warns about images that repeat."""
import io
import json
import logging
import tarfile

import numpy as np
from PIL import Image
import pytest

from coca_jax import tokenizers
from coca_jax.parallel import sharding
from coca_jax.data import local, sources
from coca_jax.data.spec import DatasetSpec
from test_eval_evaluators import COLOURS, ColourModel, _config, _folder

NAMES = list(COLOURS)


def colour_files(root):
  (root / "images").mkdir(parents=True)
  for name in NAMES:
    Image.new("RGB", (20, 24), COLOURS[name]).save(root / "images" / f"{name}.png")


def converted(spec, tmp_path):
  builder = local.prepare(spec, str(tmp_path / "tfds"))
  source = sources.Source(DatasetSpec.parse(dict(
      format="tfds", path=builder.data_dir, split="train")))
  captions = sorted(sorted(c.decode() for c in source[i]["captions"])
                    for i in range(len(source)))
  return local.bad_record_report(builder)["train"], captions


EXPECTED = sorted([[f"a {n} thing", f"the colour {n}"] for n in NAMES])


def test_repeated_csv_rows_are_one_image(tmp_path):
  colour_files(tmp_path)
  rows = ["filepath,title"] + [f"images/{n}.png,a {n} thing" for n in NAMES] + [
      f"images/{n}.png,the colour {n}" for n in reversed(NAMES)]
  (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
  report, captions = converted(dict(name="rows", format="csv",
                                    path=str(tmp_path / "pairs.csv")), tmp_path)
  assert report == {"kept": 3, "captions": 6, "dropped": 0}
  assert captions == EXPECTED


def test_jsonl_caption_lists(tmp_path):
  colour_files(tmp_path)
  lines = [json.dumps({"image": f"images/{n}.png", "caption": [f"a {n} thing",
                                                                f"the colour {n}"]})
           for n in NAMES]
  (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
  report, captions = converted(dict(name="lists", format="jsonl",
                                    path=str(tmp_path / "pairs.jsonl")), tmp_path)
  assert report == {"kept": 3, "captions": 6, "dropped": 0}
  assert captions == EXPECTED


def test_webdataset_json_caption_lists(tmp_path):
  path = tmp_path / "shards" / "00000.tar"
  path.parent.mkdir()
  with tarfile.open(path, "w") as tar:
    for n in NAMES:
      image = io.BytesIO()
      Image.new("RGB", (20, 24), COLOURS[n]).save(image, format="PNG")
      for ext, payload in (("png", image.getvalue()), ("json", json.dumps(
          {"caption": [f"a {n} thing", f"the colour {n}"]}).encode())):
        info = tarfile.TarInfo(f"{n}.{ext}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
  report, captions = converted(dict(name="wds", format="webdataset", path=str(path)), tmp_path)
  assert report == {"kept": 3, "captions": 6, "dropped": 0}
  assert captions == EXPECTED


def retrieval(config):
  from coca_jax.evals import build  # pylint: disable=g-import-not-at-top
  tok = tokenizers.load(config.data.tokenizer)
  evaluator, = build(config, ColourModel(tok), sharding.make_mesh({"data": -1}), tok)
  return evaluator.run({})


def test_retrieval_counts_images_not_rows(tmp_path):
  """Each picture given as two rows: one image with two captions, found first by both."""
  colour_files(tmp_path)
  rows = ["filepath,title"] + [f"images/{n}.png,{n}" for n in NAMES] * 2
  (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
  spec = dict(name="pairs", format="csv", path=str(tmp_path / "pairs.csv"), split="train")
  config = _config(retrieval=True, batch_size=8,
                   datasets=dict(zeroshot="", retrieval=spec, captions=""))
  config.data.data_dir = str(tmp_path / "tfds")
  r = retrieval(config)
  assert r["retrieval/images"] == 3 and r["retrieval/texts"] == 6
  assert r["retrieval/text_to_image/R@1"] == 1.0 and r["retrieval/image_to_text/R@1"] == 1.0
  assert r["retrieval/duplicate_images"] == 0


def test_repeated_images_are_warned_about_and_counted(tmp_path, caplog):
  _folder(tmp_path / "folder", {"blue": 2, "green": 1, "red": 3})  # same colour, same bytes
  config = _config(retrieval=True, batch_size=8,
                   datasets=dict(zeroshot="", retrieval=f"folder:{tmp_path / 'folder'}",
                                 captions=""))
  with caplog.at_level(logging.WARNING):
    r = retrieval(config)
  assert r["retrieval/images"] == 6 and r["retrieval/duplicate_images"] == 3
  assert "3 of 6 images repeat another image" in caplog.text
  assert r["retrieval/text_to_image/R@1"] < 1.0  # copies compete: why the warning exists
  assert np.isfinite(r["retrieval/text_to_image/mAP"])


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_tokenizer_captions_include_every_caption(tmp_path, fmt):
  colour_files(tmp_path)
  sep = "," if fmt == "csv" else "\t"
  rows = [f"filepath{sep}title"] + [f"images/{n}.png{sep}{n} one" for n in NAMES] + [
      f"images/{n}.png{sep}{n} two" for n in NAMES]
  (tmp_path / f"pairs.{fmt}").write_text("\n".join(rows) + "\n")
  got = list(sources.iter_captions(dict(name="x", format=fmt, path=str(tmp_path / f"pairs.{fmt}"))))
  assert len(got) == 6
