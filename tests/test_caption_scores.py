"""Reference-free caption scores: CLIP-S and RefCLIP-S on constructed embeddings with
hand-computed values, the decoder's log-likelihood against a direct computation, the caption
evaluator's and the ratings command's scores, correlations equal to scipy's.

No human ratings ship with the project: agreement is checked on constructed numbers only."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from coca_jax import data
from coca_jax.parallel import sharding
from coca_jax.data import preprocess
from coca_jax.evals import caption_scores as cs
from coca_jax.evals.captions import ShapesCaptionEvaluator
from test_eval_captions import _setup
from train_fixtures import MICRO_TRAIN, ROOT, random_micro_export, subprocess_env

scipy_stats = pytest.importorskip("scipy.stats")


def test_clip_s_and_ref_clip_s_hand_computed():
  image = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  caption = np.array([[0.6, 0.8], [-1.0, 0.0], [0.6, 0.8]])
  s = cs.clip_s(image, caption)
  np.testing.assert_allclose(s, [2.5 * 0.6, 0.0, 2.5 * 0.8])  # negative cosine clipped to 0
  refs = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
  owner = np.array([0, 0, 2])  # caption 1 has none; caption 2's only one points away
  r = cs.ref_clip_s(s, caption, refs, owner)
  # caption 0: best reference cosine 1.0 -> harmonic mean of 1.5 and 1.0 = 1.2.
  np.testing.assert_allclose(r, [2 * 1.5 * 1.0 / 2.5, 0.0, 0.0])


def test_correlations_equal_scipy():
  rng = np.random.default_rng(0)
  for n in (5, 40, 300):
    x = rng.integers(0, 5, n).astype(float)  # many ties, as 1-4 ratings have
    y = x + rng.normal(0, 1.5, n)
    y[: n // 4] = np.round(y[: n // 4])
    assert cs.pearson(x, y) == pytest.approx(scipy_stats.pearsonr(x, y)[0], abs=1e-12)
    assert cs.kendall_tau_b(x, y) == pytest.approx(scipy_stats.kendalltau(x, y)[0], abs=1e-12)
    assert cs.kendall_tau_b(y, x) == pytest.approx(scipy_stats.kendalltau(y, x)[0], abs=1e-12)
  assert np.isnan(cs.pearson([1, 1, 1], [1, 2, 3]))
  assert np.isnan(cs.kendall_tau_b([1, 1, 1], [1, 2, 3]))


def test_read_ratings(tmp_path):
  (tmp_path / "r.jsonl").write_text('{"image": "a.png", "caption": "x", "rating": 3}\n\n')
  (tmp_path / "r.csv").write_text("image,caption,rating\na.png,x,2.5\n")
  assert cs.read_ratings(str(tmp_path / "r.jsonl")) == [
      {"image": "a.png", "caption": "x", "rating": 3.0}]
  assert cs.read_ratings(str(tmp_path / "r.csv"))[0]["rating"] == 2.5
  (tmp_path / "bad.csv").write_text("image,caption,rating\na.png,x,good\n")
  with pytest.raises(ValueError, match="row 1 needs image, caption and a numeric rating"):
    cs.read_ratings(str(tmp_path / "bad.csv"))


def test_scorer_against_direct_computation():
  config, model, params, mesh, tok = _setup()
  size, length = config.model.vision.image_size, config.data.text_length
  images = np.random.default_rng(1).normal(size=(8, size, size, 3)).astype(np.float32)
  captions = ["a red circle", "two blue squares", "x", "a small green cross on the left",
              "", "a red circle", "triangle", "a big purple square"]
  refs = [["a red circle"], [], ["y", "z"], [], [], ["a blue circle"], [], ["a square"]]
  scorer = cs.CaptionScorer(model, mesh, tok, length)
  with jax.set_mesh(mesh):
    got = scorer.score(params, sharding.global_batch(images, mesh), captions, refs)
  embed, tokens_img = model.apply({"params": params}, jnp.asarray(images), method="encode_image")
  norm = lambda t: model.apply({"params": params}, jnp.asarray(tok.encode(t, length)),  # noqa
                               method="encode_text")[0]
  text = np.asarray(norm([f"A photo depicts {c}" for c in captions]))
  cos = np.sum(np.asarray(embed) * text, axis=1)
  np.testing.assert_allclose(got["clip_s"], 2.5 * np.maximum(cos, 0), atol=1e-5)
  plain = np.asarray(norm(captions))
  for i, rs in enumerate(refs):
    best = max([0.0] + [float(np.dot(plain[i], r)) for r in np.asarray(norm(rs))]) if rs else 0
    c = got["clip_s"][i]
    expected = 2 * c * best / (c + best) if c + best > 0 else 0.0
    assert got["ref_clip_s"][i] == pytest.approx(expected, abs=1e-5)
  # Mean log-probability of each caption's tokens after the start token, the end included.
  tokens = tok.encode(captions, length)
  logits = model.apply({"params": params}, jnp.asarray(tokens), tokens_img, method="decode")
  log_probs = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
  for i, row in enumerate(tokens):
    end = list(row).index(model.cfg.text.eos_id)
    expected = np.mean([log_probs[i, t - 1, row[t]] for t in range(1, end + 1)])
    assert got["log_likelihood"][i] == pytest.approx(expected, abs=1e-5)


def test_caption_evaluator_reports_the_scores():
  config, model, params, mesh, tok = _setup(num_examples=10, gallery=0)
  evaluator = ShapesCaptionEvaluator(config, model, mesh, tok)
  results = evaluator.run_final(params)
  assert 0 <= results["captions/clip_s"] <= 2.5
  assert 0 <= results["captions/ref_clip_s"] <= 2.5
  assert results["captions/log_likelihood"] < 0
  assert all(c["clip_s"] is not None for c in evaluator.captions)
  assert results["captions/clip_s"] == pytest.approx(
      np.mean([c["clip_s"] for c in evaluator.captions]))
  config.evals.caption_scores = False
  off = ShapesCaptionEvaluator(config, model, mesh, tok).run_final(params)
  assert "captions/clip_s" not in off


def test_ratings_command_agreement_equals_scipy(tmp_path):
  export = random_micro_export(tmp_path / "export")
  rng = np.random.default_rng(3)
  rows = []
  for i in range(10):
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "caption": ["a red circle", "a blue square"][i % 2],
                 "rating": float(i % 4)})
  (tmp_path / "ratings.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  result = subprocess.run(
      [sys.executable, "-m", "coca_jax.evals.caption_scores", f"--config={MICRO_TRAIN}",
       f"--checkpoint={export}", f"--ratings={tmp_path / 'ratings.jsonl'}",
       f"--output={tmp_path / 'out'}"], env=subprocess_env(), capture_output=True, text=True,
      timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  agreement = json.loads((tmp_path / "out" / "agreement.json").read_text())["agreement"]
  scored = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
  ratings = [r["rating"] for r in scored]
  for name in ("clip_s", "log_likelihood"):
    values = [r[name] for r in scored]
    assert agreement[name]["pearson"] == pytest.approx(scipy_stats.pearsonr(values, ratings)[0])
    assert agreement[name]["kendall_tau_b"] == pytest.approx(
        scipy_stats.kendalltau(values, ratings)[0])
  assert data and preprocess  # the package's modules the command uses import here too
