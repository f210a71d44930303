"""Exported params: the CLI, `coca_jax.load` in a fresh process, the open_clip state dict.

Uses the small open_clip CoCa of test_open_clip_parity (seeded weights), converted to a params
directory as `python -m coca_jax.convert.open_clip` writes it.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coca_jax import export, tokenizers
from coca_jax.checkpoints import params_dir
from coca_jax.convert.open_clip import convert_state_dict, to_open_clip_state_dict
from coca_jax.model import create_model
from coca_jax.tools.summary import abstract_params
from model_fixtures import MICRO

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
from test_open_clip_parity import SMALL_CONFIG, SMALL_OPEN_CLIP, randomize_, state_dict_numpy  # noqa: E402,E501  pylint: disable=g-import-not-at-top,wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a red circle", "two blue squares on a green background"]


@pytest.fixture(scope="module")
def small():
  """(torch model, its state dict, a params directory converted from it)."""
  model = open_clip.coca_model.CoCa(**SMALL_OPEN_CLIP)
  randomize_(model, seed=4)
  sd = state_dict_numpy(model)
  return model.eval(), sd, convert_state_dict(sd, SMALL_CONFIG)


@pytest.fixture()
def checkpoint(small, tmp_path):
  path = str(tmp_path / "converted")
  params_dir.save(path, small[2], SMALL_CONFIG)
  return path


def inputs(tokenizer):
  images = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
  return images, tokenizer.encode(CAPTIONS, 16)


def embeddings(model, params, images, text):
  out = jax.jit(model.apply)({"params": params}, jnp.asarray(images), jnp.asarray(text))
  return np.asarray(out["image_embed"]), np.asarray(out["text_embed"])


@pytest.mark.parametrize("scan", [False, True])
def test_open_clip_inverse_is_exact(small, scan):
  _, sd, _ = small
  cfg = dict(SMALL_CONFIG, scan_layers=scan)
  back = to_open_clip_state_dict(convert_state_dict(sd, cfg), cfg)
  assert set(back) == set(sd)
  for name, value in sd.items():
    np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_inverse_refuses_other_layouts():
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                        flax.linen.unbox(abstract_params(MICRO)))
  with pytest.raises(ValueError, match="no open_clip tensor for pooling/generative_pooler"):
    to_open_clip_state_dict(params, MICRO)
  kwargs, reasons = export.open_clip_config(MICRO)
  assert kwargs is None and "pooler.layout == 'single'" in reasons


def test_export_cli_and_load_in_a_fresh_process(small, checkpoint, tmp_path):
  """Export through the CLI, move the directory away from everything, load it in a new
  process started outside the repository: same embeddings, same tokenizer."""
  torch_model, sd, params = small
  out = tmp_path / "export"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "coca_jax.export", f"--checkpoint={checkpoint}",
                        f"--output={out}", "--tokenizer=embedded"],
                       cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stdout + run.stderr
  summary = json.loads(run.stdout.strip().splitlines()[-1])
  assert summary["tokenizer"] and summary["open_clip"].endswith("open_clip_model.safetensors")
  moved = tmp_path / "elsewhere" / "coca"
  shutil.move(str(out), str(moved))
  shutil.rmtree(checkpoint)

  tokenizer = tokenizers.load("embedded")
  images, text = inputs(tokenizer)
  np.save(tmp_path / "images.npy", images)
  script = f"""
import sys, numpy as np, jax
import coca_jax
model, params, tokenizer = coca_jax.load({str(moved)!r})
text = tokenizer.encode({CAPTIONS!r}, 16)
out = jax.jit(model.apply)({{"params": params}}, np.load({str(tmp_path / "images.npy")!r}), text)
np.savez({str(tmp_path / "fresh.npz")!r}, text=text, image=out["image_embed"],
         text_embed=out["text_embed"])
assert not any(m == "configs" or m.startswith("configs.") for m in sys.modules)
print(sorted(np.asarray(x).dtype.name for x in jax.tree.leaves(params))[0])
"""
  run = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path / "elsewhere"), env=env,
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stdout + run.stderr
  assert run.stdout.split()[-1] == "float32"
  fresh = np.load(tmp_path / "fresh.npz")
  np.testing.assert_array_equal(fresh["text"], text)
  image_embed, text_embed = embeddings(create_model(SMALL_CONFIG), params, images, text)
  np.testing.assert_allclose(fresh["image"], image_embed, atol=1e-6)
  np.testing.assert_allclose(fresh["text_embed"], text_embed, atol=1e-6)

  # open_clip builds the model from the exported config and loads the exported weights.
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  with open(moved / export.OPEN_CLIP_CONFIG) as f:
    rebuilt = open_clip.coca_model.CoCa(**json.load(f))
  rebuilt.load_state_dict(load_file(str(moved / export.OPEN_CLIP_WEIGHTS)), strict=True)
  for name, value in state_dict_numpy(rebuilt).items():
    np.testing.assert_array_equal(value, sd[name], err_msg=name)
  rebuilt.eval()
  x, t = torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(text).long()
  with torch.no_grad():
    a, b = torch_model(x, t), rebuilt(x, t)
  for key in ("image_features", "text_features", "logits"):
    np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)


def test_bfloat16_export_with_clip_tokenizer(small, checkpoint, tmp_path):
  torch_model, _, params = small
  out = str(tmp_path / "bf16")
  written = export.export(checkpoint, out, dtype="bfloat16", tokenizer="clip_bpe")
  assert written["tokenizer"] and os.path.exists(os.path.join(out, "bpe_simple_vocab_16e6.txt.gz"))
  model, loaded, tokenizer = export.load(out)
  assert {x.dtype.name for x in jax.tree.leaves(loaded)} == {"bfloat16"}
  assert isinstance(tokenizer, tokenizers.ClipBpeTokenizer)
  np.testing.assert_array_equal(tokenizer.encode(CAPTIONS, 16),
                                tokenizers.ClipBpeTokenizer().encode(CAPTIONS, 16))
  # CLIP ids exceed the small model's vocabulary: embed the embedded tokenizer's ids instead.
  images, text = inputs(tokenizers.load("embedded"))
  reference = embeddings(model, params, images, text)
  for got in (embeddings(model, loaded, images, text),
              embeddings(model, export.load(out, dtype="float32")[1], images, text)):
    for a, b in zip(got, reference):
      np.testing.assert_allclose(a, b, atol=0.03)
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  weights = load_file(os.path.join(out, export.OPEN_CLIP_WEIGHTS))
  assert {w.dtype for w in weights.values()} == {torch.bfloat16}
  rebuilt = open_clip.coca_model.CoCa(**SMALL_OPEN_CLIP)
  rebuilt.load_state_dict(weights, strict=True)  # cast to the model's float32


def test_default_tokenizer(small, checkpoint, tmp_path):
  assert export.default_tokenizer(checkpoint, params_dir.load_model_config(checkpoint)) \
      is None
  cfg = params_dir.load_model_config(checkpoint)
  clip_vocab = dataclasses.replace(
      cfg, text=dataclasses.replace(cfg.text, vocab_size=export.CLIP_VOCAB_SIZE))
  assert export.default_tokenizer(checkpoint, clip_vocab) == "clip_bpe"
  saved = str(tmp_path / "with_tokenizer")
  params_dir.save(saved, small[2], SMALL_CONFIG, tokenizer="embedded")
  tokenizer = export.default_tokenizer(saved, clip_vocab)
  assert isinstance(tokenizer, tokenizers.SentencePieceTokenizer)
  with pytest.raises(FileExistsError):
    export.export(saved, saved)
  workdir = tmp_path / "workdir"
  (workdir / "checkpoints" / "100").mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"data": {"tokenizer": "clip_bpe:/x.gz"}}))
  for path in (workdir, workdir / "checkpoints" / "100"):
    assert export.default_tokenizer(str(path), cfg) == "clip_bpe:/x.gz"
