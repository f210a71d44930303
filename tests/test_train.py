"""Training in-process: config refusals, the sharded step, gradient accumulation, the paper's
Adafactor, weight-decay mask, non-finite handling, checkpoint fallback, params-only init."""
import dataclasses
import json
import subprocess

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

import coca_jax
from coca_jax import checkpoints, data
from coca_jax.model import adapt
from coca_jax.parallel import sharding
from coca_jax.train import config_checks, optim
from coca_jax.train import program as program_lib
from coca_jax.train import state as state_lib
from coca_jax.train import step as ts
from coca_jax.train import train_and_evaluate
from coca_jax.train.loop import NonFiniteError
from model_fixtures import MICRO, make_images, make_text
from train_fixtures import ROOT, micro_config, train_command, subprocess_env


# --- item 1: configs that cannot work are refused before anything compiles ----------------

@pytest.mark.parametrize("change, field", [
    (lambda c: setattr(c, "global_batch_size", 12), "global_batch_size"),   # 8 data devices
    (lambda c: c.model.vision.update(num_heads=3), "vision.num_heads"),
    (lambda c: c.data.update(text_length=40), "data.text_length"),
    (lambda c: c.mesh.update(data=16), "mesh"),
    (lambda c: c.mesh.update(data=2, fsdp=2, tensor=4), "mesh"),
    (lambda c: setattr(c, "grad_accum_steps", 3), "grad_accum_steps"),
    (lambda c: setattr(c, "nonfinite", "ignore"), "nonfinite"),
])
def test_bad_configs_are_refused_naming_the_field(change, field):
  config = micro_config()
  change(config)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    config_checks.check(config)


def test_unknown_override_is_refused_by_the_command_line(tmp_path):
  result = subprocess.run(train_command(tmp_path, "--config.optimizer.learnin_rate=1"),
                          env=subprocess_env(), capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
  assert result.returncode != 0
  assert "learnin_rate" in result.stderr


# --- item 2 / 11a: the sharded step equals the single-device step -------------------------

def _state_and_step(mesh, rules, accum=1, tx=None):
  model = coca_jax.create_model(MICRO)
  images, text = make_images(8), make_text([5, 12, 7, 9, 6, 10, 8, 11])
  opt_cfg = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, warmup_fraction=0.0, decay="constant", b1=0.9,
      b2=0.999, weight_decay=0.1, grad_clip_norm=1.0))
  boxed = jax.eval_shape(lambda k: model.init(k, images, text)["params"], jax.random.key(0))
  tx = tx or optim.create_optimizer(opt_cfg, 10, nn.unbox(boxed))
  init = lambda k: state_lib.TrainState.create(model.init(k, images, text)["params"], tx)
  boxed_state = state_lib.fit_names(jax.eval_shape(init, jax.random.key(0)), mesh, rules)
  shardings = sharding.logical_shardings(boxed_state, mesh, rules)
  step = ts.make_train_step(model, tx, optim.schedule(opt_cfg, 10), pad_id=0,
                            accum_steps=accum)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(jax.random.key(0))
    batch = sharding.global_batch({"images": np.asarray(images), "text": np.asarray(text)},
                                  mesh, rules)
    new_state, metrics = jax.jit(step, donate_argnums=(0,), out_shardings=(shardings, None))(
        state, batch)
  return new_state, metrics


def test_sharded_train_step_equals_single_device():
  # SGD with momentum: Adam's first step, g / (|g| + eps), would amplify float noise in
  # near-zero gradients and hide a real difference behind a loose tolerance.
  tx = optax.sgd(0.1, momentum=0.9)
  rules = sharding.DEFAULT_RULES
  single = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  ref_state, ref_metrics = _state_and_step(single, rules, tx=tx)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  state, metrics = _state_and_step(mesh, rules, tx=tx)
  kernel = state.params["text"]["layers_0"]["block"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (16, 32)  # (32, 64) over 2 x 2
  trace = state.opt_state[0].trace["text"]["layers_0"]["block"]["mlp"]["fc1"]["kernel"]
  assert trace.sharding.spec == PartitionSpec("fsdp", "tensor")
  np.testing.assert_allclose(metrics["loss/total"], ref_metrics["loss/total"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       atol=1e-6),
               state.params, ref_state.params)


# --- item 3 / 11f: gradient accumulation keeps the global-batch contrastive loss -----------

def test_gradient_accumulation_equals_full_batch():
  """Accumulated gradients equal the full batch's (whole logits); with `caption_loss_chunks`
  the micro-batches' caption loss is taken chunk by chunk and must still agree."""
  model = coca_jax.create_model(MICRO)
  images, text = make_images(8), make_text([5, 12, 7, 9, 6, 10, 8, 11])
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, text))["params"]
  batch = {"images": images, "text": text}
  kw = dict(pad_id=0, weights=(1.0, 2.0))
  full_grads = jax.jit(lambda p, b: ts.full_batch_grads(model, p, b, jax.random.key(0), **kw))
  full_parts, full = full_grads(params, batch)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(full))
  for chunks in (0, 3):
    micro_model = coca_jax.create_model(dict(MICRO, caption_loss_chunks=chunks))
    parts, acc = jax.jit(lambda p, m=micro_model: ts.accumulated_grads(
        m, p, batch, jax.random.key(0), accum_steps=4, **kw))(params)
    for name in ("total", "contrastive", "caption"):
      np.testing.assert_allclose(parts[name], full_parts[name], rtol=1e-5)
    worst = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(acc),
                                                            jax.tree.leaves(full)))
    assert worst <= 1e-5 * scale, (chunks, worst, scale)
    # The update (here SGD's, -lr * g) agrees to 1e-5 in relative norm. (Adam's first step,
    # g / (|g| + eps), would amplify float noise in near-zero gradients.)
    diff = optax.tree.norm(jax.tree.map(jnp.subtract, acc, full))
    assert diff <= 1e-5 * optax.tree.norm(full), (chunks, float(diff))
  # The naive sum of per-micro-batch losses differs: the test can tell them apart.
  halves = [jax.tree.map(lambda x, i=i: x[i::2], batch) for i in range(2)]
  naive = [full_grads(params, h)[0]["contrastive"] for h in halves]
  assert abs(float(np.mean(naive)) - float(full_parts["contrastive"])) > 1e-3


def test_distillation_term_accumulates_exactly_and_vanishes_at_the_reference():
  """The embedding-distillation term (loss.distill_weight) and per-example caption weights
  (datasets' caption_weight, one class-name-like half at 0) give the same parts and gradients
  over micro-batches as over the whole batch; at the reference params the distillation term is
  0 and leaves the gradient as it is without it (1 - cos has a zero gradient at cos = 1)."""
  model = coca_jax.create_model(MICRO)
  images, text = make_images(8), make_text([5, 12, 7, 9, 6, 10, 8, 11])
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, text))["params"]
  batch = {"images": images, "text": text,
           "caption_weight": jnp.asarray([1, 0, 1, 0, 1, 0, 2, 0], jnp.float32)}
  noise = jax.tree.map(lambda x: 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
  reference = jax.tree.map(jnp.add, params, noise)
  kw = dict(pad_id=0, weights=(1.0, 2.0, 3.0), reference=reference)
  # One program for any reference: the reference is an argument, not a constant.
  with_reference = jax.jit(lambda p, r: ts.full_batch_grads(
      model, p, batch, jax.random.key(0), **{**kw, "reference": r}))
  full_parts, full = with_reference(params, reference)
  assert float(full_parts["distill"]) > 1e-3
  without = jax.jit(lambda p: ts.full_batch_grads(
      model, p, batch, jax.random.key(0), pad_id=0, weights=(1.0, 2.0)))(params)
  np.testing.assert_allclose(full_parts["total"],
                             without[0]["total"] + 3.0 * full_parts["distill"], rtol=1e-6)
  parts, acc = jax.jit(lambda p: ts.accumulated_grads(
      model, p, batch, jax.random.key(0), accum_steps=4, **kw))(params)
  for name in ("total", "contrastive", "caption", "distill"):
    np.testing.assert_allclose(parts[name], full_parts[name], rtol=1e-5)
  diff = optax.tree.norm(jax.tree.map(jnp.subtract, acc, full))
  assert diff <= 1e-5 * optax.tree.norm(full)
  assert float(optax.tree.norm(jax.tree.map(jnp.subtract, full, without[1]))) > 1e-4
  # At the reference itself: no distance, and the gradient of the term is zero.
  at_ref, grads_at_ref = with_reference(params, params)
  assert abs(float(at_ref["distill"])) < 1e-6
  diff = optax.tree.norm(jax.tree.map(jnp.subtract, grads_at_ref, without[1]))
  assert diff <= 1e-4 * optax.tree.norm(without[1])
  step = ts.make_train_step(model, optax.sgd(0.1), lambda s: 0.1, pad_id=0, distill_weight=1.0)
  with pytest.raises(ValueError, match="reference"):
    jax.eval_shape(step, state_lib.TrainState.create(params, optax.sgd(0.1)), batch)


def test_dataset_caption_weights_apply_from_their_step():
  """loss.dataset_caption_weights_from: before its step every example weighs 1 in the caption
  loss (the batch's caption_weight is ignored), from it on the datasets' weights count; the
  step is the state's, so a resumed run switches at the same step."""
  model = coca_jax.create_model(MICRO)
  images, text = make_images(8), make_text([5, 12, 7, 9, 6, 10, 8, 11])
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, text))["params"]
  weights = jnp.asarray([1, 0, 1, 0, 1, 0, 1, 0], jnp.float32)
  state = state_lib.TrainState.create(params, optax.sgd(0.1))
  caption = {}
  for from_step in (0, 3):
    step = jax.jit(ts.make_train_step(model, optax.sgd(0.1), lambda s: 0.1, pad_id=0,
                                      dataset_caption_weights_from_step=from_step))
    for at in (2, 3):
      for name, w in (("weighted", weights), ("ones", jnp.ones(8))):
        batch = {"images": images, "text": text, "caption_weight": w}
        metrics = step(dataclasses.replace(state, step=jnp.int32(at)), batch)[1]
        caption[from_step, at, name] = float(metrics["loss/caption"])
  assert abs(caption[0, 2, "weighted"] - caption[0, 2, "ones"]) > 1e-3  # the weights matter
  assert caption[3, 2, "weighted"] == caption[0, 2, "ones"]  # before the step: all ones
  assert caption[3, 3, "weighted"] == caption[0, 3, "weighted"]  # from it: the weights
  config = micro_config()
  config.loss.dataset_caption_weights_from = 0.3
  config.num_train_steps = 10
  assert program_lib.dataset_caption_weights_from_step(config) == 3
  config.loss.dataset_caption_weights_from = 1.5
  with pytest.raises(ValueError, match="dataset_caption_weights_from"):
    program_lib.dataset_caption_weights_from_step(config)


# --- item 3: the paper's Adafactor and the weight-decay mask --------------------------------

def test_paper_adafactor_follows_its_formula():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(130, 140)).astype(np.float32)  # factored (both dims >= 128)
  b = rng.normal(size=(7,)).astype(np.float32)        # unfactored
  params = {"dense": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
  mask = optim.weight_decay_mask(params)
  lr, b1, b2, wd = 0.01, 0.9, 0.999, 0.01
  tx = optim.paper_adafactor(lr, b1, b2, wd, mask)
  state = tx.init(params)
  ref = {"w": w.astype(np.float64), "b": b.astype(np.float64)}
  r = np.zeros(130); c = np.zeros(140); vb = np.zeros(7)
  mw = np.zeros_like(ref["w"]); mb = np.zeros_like(ref["b"])
  for t in range(1, 4):
    gw = rng.normal(size=w.shape); gb = rng.normal(size=b.shape)
    grads = {"dense": {"kernel": jnp.asarray(gw, jnp.float32),
                       "bias": jnp.asarray(gb, jnp.float32)}}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    beta = b2 * (1 - b2 ** (t - 1)) / (1 - b2 ** t)
    r = beta * r + (1 - beta) * (gw ** 2 + 1e-30).mean(axis=1)
    c = beta * c + (1 - beta) * (gw ** 2 + 1e-30).mean(axis=0)
    v = np.outer(r, c) / r.mean()
    vb = beta * vb + (1 - beta) * (gb ** 2 + 1e-30)
    mw = b1 * mw + (1 - b1) * gw / np.sqrt(v)
    mb = b1 * mb + (1 - b1) * gb / np.sqrt(vb)
    ref["w"] = ref["w"] - lr * (mw / (1 - b1 ** t) + wd * ref["w"])
    ref["b"] = ref["b"] - lr * (mb / (1 - b1 ** t))  # biases do not decay
  np.testing.assert_allclose(params["dense"]["kernel"], ref["w"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(params["dense"]["bias"], ref["b"], rtol=1e-4, atol=1e-6)


def test_weight_decay_only_on_weight_matrices():
  model = coca_jax.create_model(MICRO)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), make_images(1),
                                   make_text([5])))["params"]
  flat = {jax.tree_util.keystr(p): m for p, m in
          jax.tree_util.tree_leaves_with_path(optim.weight_decay_mask(params))}
  decayed = {k for k, m in flat.items() if m}
  assert any("['mlp']['fc1']['kernel']" in k for k in decayed)
  assert any("['pooling']['proj']" in k for k in decayed)
  for word in ("bias", "scale", "embedding", "cls_embedding", "queries", "logit_scale",
               "pos_embedding"):
    assert not any(k.endswith(f"['{word}']") for k in decayed), word


def test_schedule_warms_up_then_decays():
  cfg = ml_collections.ConfigDict(dict(learning_rate=8e-4, warmup_fraction=0.02,
                                       decay="linear", end_learning_rate=0.0))
  lr = optim.schedule(cfg, 1000)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(lr(10), 4e-4, rtol=1e-5)
  np.testing.assert_allclose(lr(20), 8e-4, rtol=1e-5)
  np.testing.assert_allclose(lr(510), 4e-4, rtol=1e-5)
  assert float(lr(1000)) == pytest.approx(0.0, abs=1e-9)


def test_adafactor_trains_with_factored_statistics_sharded(tmp_path):
  """Factored second moments have other shapes than their params: they must not inherit the
  params' axis names (a rank mismatch at init) and training must run on a sharded mesh."""
  config = micro_config()
  config.optimizer = dict(name="adafactor", learning_rate=1e-3, warmup_fraction=0.0,
                          warmup_steps=1, decay="linear", end_learning_rate=0.0, b1=0.9,
                          b2=0.999, eps=1e-30, weight_decay=0.01, grad_clip_norm=0.0,
                          min_dim_size_to_factor=16)
  config.mesh = dict(slice=1, data=2, fsdp=2, tensor=2)
  config.num_train_steps = 2
  train_and_evaluate(config, tmp_path / "adafactor")
  params, _ = checkpoints.load_params(tmp_path / "adafactor")
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


# --- items 8 / 11g: non-finite values -------------------------------------------------------

class NaNImagesAt:
  """A training iterator whose batch number `index` (from 0) has NaN images: a bad batch as a
  broken decoder could give, put in from outside the trainer."""

  def __init__(self, iterator, index):
    self.iterator, self.index, self.count = iterator, index, 0

  def __next__(self):
    batch = next(self.iterator)
    if self.count == self.index:
      batch = {**batch, "images": np.full_like(batch["images"], np.nan)}
    self.count += 1
    return batch

  def __getattr__(self, name):  # state, stats, input wait and close: the wrapped iterator's
    return getattr(self.iterator, name)


@pytest.fixture
def nan_at_third_batch(monkeypatch):
  build = data.build_train_iterator
  monkeypatch.setattr(data, "build_train_iterator",
                      lambda *a, **k: NaNImagesAt(build(*a, **k), index=2))


def test_nan_batch_stops_training_naming_the_step(tmp_path, nan_at_third_batch):
  config = micro_config()  # the third batch has NaN images (steps are counted from 1)
  with pytest.raises(NonFiniteError, match="at step 3"):
    train_and_evaluate(config, tmp_path / "nan")
  # No checkpoint after the bad step was written: the latest holds finite params.
  steps = sorted(int(p.name) for p in (tmp_path / "nan" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [2]


def test_nan_batch_is_skipped_when_configured(tmp_path, capsys, nan_at_third_batch):
  config = micro_config()
  config.nonfinite = "skip"
  train_and_evaluate(config, tmp_path / "skip")
  params, _ = checkpoints.load_params(tmp_path / "skip")
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


# --- items 5 / 11e: an unreadable latest checkpoint falls back to the previous one ----------

def test_corrupted_latest_checkpoint_falls_back(tmp_path, capsys):
  workdir = tmp_path / "run"
  config = micro_config()  # 6 steps, a checkpoint every 2: the other tests' program
  train_and_evaluate(config, workdir)
  latest = workdir / "checkpoints" / "6" / "state"
  victims = [p for p in latest.rglob("*") if p.is_file() and p.stat().st_size > 0
             and "manifest" not in p.name and p.suffix != ".json"]
  assert victims
  for p in victims:  # truncate every data file of the latest checkpoint
    p.write_bytes(p.read_bytes()[:7])
  capsys.readouterr()
  train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert f"resumed from {workdir}/checkpoints/4" in out
  # The unreadable step is kept aside, and the resumed run wrote that step again, readable.
  assert (workdir / "checkpoints" / "6.unreadable" / "state").is_dir()
  params, _ = checkpoints.load_params(workdir / "checkpoints" / "6")
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


# --- item 5: params-only initialisation, resized position embeddings -----------------------

def test_init_from_loads_params_and_resizes_positions(tmp_path, capsys):
  config = micro_config()
  train_and_evaluate(config, tmp_path / "source")
  source_params, source_cfg = checkpoints.load_params(tmp_path / "source")

  target = micro_config()
  target.model.vision.image_size = 24  # 6x6 patches instead of 4x4
  target.data.image_size = 24
  target.model.scan_layers = True
  adapted = adapt.adapt_params(source_params, source_cfg, target.model)
  assert adapted["visual"]["pos_embedding"].shape == (36, 32)
  np.testing.assert_array_equal(adapted["text"]["layers"]["block"]["mlp"]["fc1"]["kernel"][0],
                                source_params["text"]["layers_0"]["block"]["mlp"]["fc1"]
                                ["kernel"])
  # A constant grid stays constant under 2-D interpolation.
  flat = np.ones((17, 4), np.float32)
  flat[0] = 5.0
  resized = adapt.resize_position_embedding(flat, 64, class_token=True)
  assert resized.shape == (65, 4) and resized[0, 0] == 5.0
  np.testing.assert_allclose(resized[1:], 1.0, rtol=1e-6)

  target.init_from = str(tmp_path / "source")
  target.num_train_steps = 1
  capsys.readouterr()
  train_and_evaluate(target, tmp_path / "target")
  assert "initialised params from" in capsys.readouterr().out
  config_json = json.loads((tmp_path / "target" / "config.json").read_text())
  assert config_json["init_from"] == str(tmp_path / "source")
