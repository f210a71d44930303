"""Batch inference: every example once, rows in split order, equal to the model run directly;
the command line with a texts file and beam-search captions, given a fine-tune config whose
model and text length come from the checkpoint."""
import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coca_jax import data, tokenizers
from coca_jax.checkpoints import params_dir
from coca_jax.inference.batch import infer
from coca_jax.model import create_model
from train_fixtures import ROOT, micro_config, subprocess_env

SPLIT = "coca_shapes:validation[:21]"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  config = micro_config()
  model = create_model(config.model)
  params = nn.unbox(model.init(jax.random.key(5), jnp.zeros((1, 16, 16, 3)),
                               jnp.zeros((1, 16), jnp.int32))["params"])
  directory = tmp_path_factory.mktemp("params")
  params_dir.save(str(directory), params, config.model)
  return directory, model, params


def test_infer_writes_every_example_in_split_order(tmp_path, saved):
  directory, model, params = saved
  config = micro_config()
  manifest = infer(config, str(directory), str(tmp_path), SPLIT,
                   ("image_embeddings", "text_embeddings", "captions"), batch_size=8)
  assert manifest["examples"] == 21
  images = np.load(tmp_path / "image_embeddings.npy")
  texts = np.load(tmp_path / "text_embeddings.npy")
  assert images.shape == (21, 32) and texts.shape == (84, 32)
  assert np.isfinite(images).all() and np.isfinite(texts).all()
  # The same rows, computed directly on one device in one batch.
  tok = tokenizers.load(config.data.tokenizer)
  it = data.build_eval_iterator(config.data, global_batch_size=21, process_index=0,
                                process_count=1, tokenizer=tok,
                                dataset={"name": "coca_shapes", "split": "validation[:21]"})
  batch = next(iter(it))
  direct = model.apply({"params": params}, jnp.asarray(batch["images"]), method="encode_image")[0]
  np.testing.assert_allclose(images, np.asarray(direct), atol=1e-5)
  lines = [json.loads(x) for x in (tmp_path / "texts.jsonl").read_text().splitlines()]
  assert [x["image"] for x in lines] == [i for i in range(21) for _ in range(4)]
  tokens = tok.encode([x["text"] for x in lines[:5]], config.data.text_length)
  direct = model.apply({"params": params}, jnp.asarray(tokens), method="encode_text")[0]
  np.testing.assert_allclose(texts[:5], np.asarray(direct), atol=1e-5)
  captions = [json.loads(x) for x in (tmp_path / "captions.jsonl").read_text().splitlines()]
  assert [c["index"] for c in captions] == list(range(21))
  assert all(len(c["references"]) == 4 for c in captions)
  for c in captions:  # reference-free scores beside each caption (caption_scores.py)
    assert 0 <= c["clip_s"] <= 2.5 and 0 <= c["ref_clip_s"] <= 2.5 and c["log_likelihood"] < 0


def test_infer_command_line(tmp_path, saved):
  directory, _, _ = saved
  (tmp_path / "texts.txt").write_text("a red circle\n\na blue square on the left\n")
  config = ROOT / "configs" / "caption_finetune.py"  # model "init_from", text length 0
  command = [sys.executable, "-m", "coca_jax.inference.batch", f"--config={config}",
             f"--checkpoint={directory}", f"--dataset={SPLIT}",
             "--outputs=text_embeddings,captions", f"--texts={tmp_path / 'texts.txt'}",
             "--strategy=beam", "--num_beams=2", "--batch_size=8",
             "--repetition_penalty=1.3", "--no_repeat_ngram_size=2",
             f"--output={tmp_path / 'out'}"]
  result = subprocess.run(command, env=subprocess_env(2), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert np.load(tmp_path / "out" / "text_embeddings.npy").shape == (2, 32)
  manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
  assert manifest["files"]["captions.jsonl"] == 21
  assert len((tmp_path / "out" / "captions.jsonl").read_text().splitlines()) == 21
  assert "infer: images: 21/21" in result.stdout
  for line in (tmp_path / "out" / "captions.jsonl").read_text().splitlines():
    words = json.loads(line)["caption"].split()
    pairs = list(zip(words, words[1:]))
    assert len(pairs) == len(set(pairs)), words  # no repeated bigram of tokens (and words)


def test_infer_on_numbered_folders_takes_the_class_names(tmp_path, saved):
  """A folder read by inference names its classes as evaluation does (numbers in numeric
  order, a names file from config.evals.class_names)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  directory, _, _ = saved
  for folder in ("2", "10", "1"):
    (tmp_path / "images" / folder).mkdir(parents=True)
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "images" / folder / "x.png")
  (tmp_path / "names.txt").write_text("\n".join(f"thing {i}" for i in range(11)))
  config = micro_config()
  with config.unlocked():
    config.evals.class_names = str(tmp_path / "names.txt")
  infer(config, str(directory), str(tmp_path / "out"), f"folder:{tmp_path / 'images'}",
        ("text_embeddings",), batch_size=8)
  lines = [json.loads(x) for x in (tmp_path / "out" / "texts.jsonl").read_text().splitlines()]
  assert [x["text"] for x in lines] == [f"a photo of a thing {i}." for i in (1, 2, 10)]


def test_infer_on_a_pile_of_images(tmp_path, saved):
  """A flat folder, a glob and a list file: rows carry their file; an unreadable file is
  listed and counted, and the run goes on."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from coca_jax.evals import image_files  # pylint: disable=g-import-not-at-top
  directory, model, params = saved
  photos = tmp_path / "photos"
  photos.mkdir()
  rng = np.random.default_rng(0)
  for name in ("b.jpg", "a.png", "c.jpeg"):
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(photos / name)
  (photos / "broken.jpg").write_bytes(b"not an image")
  (photos / "notes.txt").write_text("not a picture")
  (photos / "sub").mkdir()
  Image.new("RGB", (8, 8)).save(photos / "sub" / "deeper.png")
  names = ["a.png", "b.jpg", "broken.jpg", "c.jpeg"]
  assert image_files.list_images(str(photos)) == [str(photos / n) for n in names]
  assert image_files.list_images(str(photos / "*.jp*g")) == [
      str(photos / n) for n in ("b.jpg", "broken.jpg", "c.jpeg")]
  (tmp_path / "list.txt").write_text("photos/c.jpeg\n\nphotos/missing.png\nphotos/a.png\n")
  assert image_files.list_images(str(tmp_path / "list.txt")) == [
      str(tmp_path / p) for p in ("photos/c.jpeg", "photos/missing.png", "photos/a.png")]

  config = micro_config()
  out = tmp_path / "out"
  manifest = infer(config, str(directory), str(out), f"images:{photos}",
                   ("image_embeddings", "captions"), batch_size=8)
  assert manifest["examples"] == 4 and manifest["unreadable"] == 1
  assert (out / "paths.txt").read_text().split() == [str(photos / n) for n in names]
  assert (out / "unreadable.txt").read_text().split() == [str(photos / "broken.jpg")]
  embeds = np.load(out / "image_embeddings.npy")
  assert np.isnan(embeds[2]).all() and np.isfinite(np.delete(embeds, 2, 0)).all()
  captions = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
  assert [c["path"] for c in captions] == [str(photos / n) for n in names if n != "broken.jpg"]
  assert all(isinstance(c["caption"], str) and c["references"] == [] for c in captions)
  manifest = infer(config, str(directory), str(tmp_path / "listed"), f"images:{tmp_path / 'list.txt'}",
                   ("image_embeddings",), batch_size=8)
  assert manifest["unreadable"] == 1
  assert (tmp_path / "listed" / "unreadable.txt").read_text().split() == [
      str(tmp_path / "photos/missing.png")]
  with pytest.raises(ValueError, match=r"no class sub-folders.*images:"):
    infer(config, str(directory), str(tmp_path / "folder"), f"folder:{photos / 'sub'}",
          ("image_embeddings",), batch_size=8)
