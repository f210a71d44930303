"""Image classification on CoCa's image encoder, trained by `train.py` when `config.task` is
"probe" (frozen encoder: linear or attentive probe) or "classify" (end-to-end fine-tuning).

config -> mesh -> labelled data -> classifier with the encoder from `init_from` -> state of the
trainable params only (a probe's encoder params are a separate, non-donated argument: no
gradient, no update, no optimizer state) -> jitted step (label-smoothed cross-entropy) -> loop
with metrics and checkpoints -> top-1 / top-5 on the eval split.

`config.classify` fields:
  label          "label" (the dataset's classes) or a coca_shapes attribute (data/labels.py)
  features       "embedding" | "encoder_mean" | "attentive" (classifier.py)
  hidden_dim     hidden layer of the head (0: a linear head)
  head_dropout   dropout before the head's output layer
  label_smoothing
  freeze         extra param path prefixes kept fixed (a probe always freezes the encoder)
  manual_dir     TFDS datasets of train/eval (e.g. imagenet2012) are prepared from it first
  cache_features a probe on "embedding" / "encoder_mean" with centre-cropped training images:
                 run the encoder over the train split once and train the head on the stored
                 features (feature_cache.py)
Checkpoints hold every param ({"visual", "pooling"?, "head", ...}), the trainable params'
optimizer state, and the data position; the same command resumes.
"""
import json
import time
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from coca_jax import checkpoints, tokenizers
from coca_jax.data import labels as labels_lib
from coca_jax.data.config import resolve as resolve_data
from coca_jax.data.spec import DatasetSpec
from coca_jax.evals import common
from coca_jax.evals.zero_shot import topk_hits
from coca_jax.model import adapt
from coca_jax.model.classifier import FEATURES, ImageClassifier, head_of
from coca_jax.model.config import from_dict
from coca_jax.parallel import sharding
from coca_jax.parallel.distributed import barrier, print0
from coca_jax.train import feature_cache, freeze, loop, optim, setup
from coca_jax.train.state import TrainState, state_layout

TASKS = ("probe", "classify")


def check(config) -> None:
  """Refuses a classification config that cannot work, naming the field."""
  c = config.classify
  if config.task not in TASKS + ("pretrain",):
    raise ValueError(f"config.task: {config.task!r} is not pretrain, probe or classify")
  if c.features not in FEATURES:
    raise ValueError(f"config.classify.features: {c.features!r} is not one of {FEATURES}")
  if c.label not in labels_lib.LABELS:
    raise ValueError(f"config.classify.label: {c.label!r} is not one of {labels_lib.LABELS}")
  if not 0.0 <= c.label_smoothing < 1.0:
    raise ValueError(f"config.classify.label_smoothing: {c.label_smoothing} not in [0, 1)")
  if config.task == "probe" and not config.init_from:
    raise ValueError("config.init_from: a probe needs a trained encoder (a workdir, a "
                     "checkpoint step or an export)")
  data_size = resolve_data(config.data)["image_size"]
  model_size = None if isinstance(config.model, str) else from_dict(config.model).vision.image_size
  if model_size is not None and data_size != model_size:
    raise ValueError(f"config.data.image_size: {data_size} differs from "
                     f"model.vision.image_size {model_size}")
  if config.grad_accum_steps != 1:
    raise ValueError("config.grad_accum_steps: classification trains without accumulation")
  if c.hidden_dim < 0:
    raise ValueError(f"config.classify.hidden_dim: {c.hidden_dim} must be >= 0 (0: linear)")
  if c.get("cache_features", False):
    if config.task != "probe" or c.features not in ("embedding", "encoder_mean"):
      raise ValueError("config.classify.cache_features: only a probe on fixed features "
                       f"(embedding, encoder_mean) can cache them, not {config.task} on "
                       f"{c.features}")
    if config.data.crop != "center":
      raise ValueError("config.classify.cache_features: needs config.data.crop='center' "
                       f"(the cache holds one view of each image), not {config.data.crop!r}")


def frozen_prefixes(config, model: ImageClassifier):
  """The param path prefixes kept fixed: config.classify.freeze and, for a probe, the
  whole encoder (its top-level names)."""
  prefixes = list(config.classify.get("freeze", ()) or ())
  if config.task == "probe":
    prefixes += [n for n in model.encoder_names() if n not in prefixes]
  return tuple(prefixes)


def make_train_step(logits_fn, tx, schedule, *, label_smoothing: float, num_classes: int,
                    seed: int = 0):
  """train_step(state, batch, frozen) -> (state, metrics); the state's params are the
  trainable ones, `frozen` the others. `logits_fn(params, batch, rng)`: the classifier's
  logits (on images, or on cached features) with all params."""
  def train_step(state: TrainState, batch, frozen):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(p):
      logits = logits_fn(freeze.merge(p, frozen), batch, rng)
      targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes),
                                    label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads, tx, finite)
    accuracy = (jnp.argmax(logits, -1) == batch["label"]).mean()
    return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm,
                       "learning_rate": schedule(state.step), "finite": finite.astype(jnp.float32)}

  return train_step


def evaluate_classifier(model, params, eval_iter, mesh, rules) -> Dict[str, float]:
  """Top-1 / top-5 accuracy (fractions) and the example count over every example of the eval
  iterator (batches of "images" (B, S, S, 3) float32, "label" (B,) int32, "mask" (B,) bool;
  labels < 0 are not counted)."""
  @jax.jit
  def hits(params, images, labels, mask):
    logits = model.apply({"params": params}, images)
    return topk_hits(logits, labels, mask & (labels >= 0))

  totals = np.zeros(3)
  for batch in eval_iter:
    batch = sharding.global_batch({k: batch[k] for k in ("images", "label", "mask")}, mesh,
                                  rules)
    totals += np.array([sharding.to_host(x) for x in hits(params, batch["images"],
                                                          batch["label"], batch["mask"])])
  count = max(totals[2], 1)
  return {"classify/top1": totals[0] / count, "classify/top5": totals[1] / count,
          "classify/examples": int(totals[2])}


def _encoder_from(config, params, encoder_names):
  """The classifier's params with the encoder's subtrees from `config.init_from`."""
  loaded, source_cfg = checkpoints.load_params(config.init_from)
  loaded = adapt.adapt_params(loaded, source_cfg, config.model)
  out = dict(params)
  for name in encoder_names:
    adapt.check_params_fit({name: loaded.get(name, {})}, {name: params[name]},
                                f"config.init_from={config.init_from}")
    out[name] = jax.tree.map(np.asarray, loaded[name])
  return out


def _feature_cache(config, workdir, model, frozen, tokenizer, mesh, rules):
  """(features, labels) of the train split: the workdir's cache if it was made by the same
  encoder, data and feature, else computed now (one pass of the encoder) and saved."""
  data = resolve_data(config.data)
  key = json.loads(json.dumps({  # what decides the features (JSON-normalised: tuples as lists)
      "init_from": str(config.init_from), "features": config.classify.features,
      "label": config.classify.label,
      **{k: data[k] for k in ("train", "data_dir", "image_size", "normalization", "mean",
                              "std")}}))
  found = feature_cache.load(workdir, key)
  if found is not None:
    print0(f"feature cache: {len(found[1])} examples from {workdir / feature_cache.DIRNAME}")
    return found
  start = time.perf_counter()
  encoder = model.clone(with_head=False)
  features_fn = jax.jit(lambda p, images: encoder.apply({"params": p}, images))
  batches = labels_lib.build_eval_iterator(
      config.data, config.classify.label,
      global_batch_size=common.fit_batch(config.evals.batch_size, mesh),
      process_index=jax.process_index(), process_count=jax.process_count(),
      tokenizer=tokenizer, dataset=data["train"])
  features, labels = feature_cache.compute(features_fn, frozen, batches, mesh, rules)
  if jax.process_index() == 0:
    feature_cache.save(workdir, key, features, labels)
  barrier("feature_cache_saved")
  print0(f"feature cache: {features.shape[0]} examples x {features.shape[1]} features in "
         f"{time.perf_counter() - start:.1f}s")
  return features, labels


def train_and_evaluate(config, workdir) -> Dict[str, Any]:
  """Trains the classifier (resuming from `workdir`), evaluates top-1 / top-5 on the eval split
  and returns them as fractions ({"classify/top1", "classify/top5", "classify/chance",
  "classify/examples"}; {"preempted_at_step": step} when preempted). Raises ValueError for a
  config that cannot work (`check`)."""
  # --- processes, config, workdir, mesh --------------------------------------------------------
  run = setup.start(config, workdir, check)
  config, c = run.config, run.config.classify
  model_cfg, data_cfg = from_dict(config.model), resolve_data(config.data)

  # --- data ------------------------------------------------------------------------------------
  _prepare_manual_datasets(config, data_cfg)
  tokenizer = tokenizers.load(config.data.tokenizer)  # the pipeline tokenizes a caption too
  num_classes = len(labels_lib.class_names(config.data, data_cfg["train"], c.label))
  cached = bool(c.get("cache_features", False))
  if cached:
    train_iter = feature_cache.CachedBatches(config.global_batch_size, config.seed,
                                             jax.process_index(), jax.process_count())
  else:
    train_iter = labels_lib.build_train_iterator(
        config.data, c.label, global_batch_size=config.global_batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        tokenizer=tokenizer)

  # --- model and train state -------------------------------------------------------------------
  model = ImageClassifier(model_cfg, num_classes, c.features, c.hidden_dim, c.head_dropout,
                          deterministic=(c.head_dropout == 0 and model_cfg.dropout_rate == 0))
  example = jnp.zeros((1, model_cfg.vision.image_size, model_cfg.vision.image_size, 3))
  init_params = lambda rng: model.init(rng, example)["params"]  # noqa: E731
  prefixes = frozen_prefixes(config, model)
  abstract_params = nn.unbox(jax.eval_shape(init_params, jax.random.key(0)))
  trainable = freeze.split(abstract_params, prefixes)[0]
  tx = optim.create_optimizer(config.optimizer, config.num_train_steps, trainable)
  schedule = optim.schedule(config.optimizer, config.num_train_steps)
  layout = state_layout(init_params, tx, prefixes, run.mesh, run.rules)
  start = setup.restore_or_init(
      run, layout, train_iter,
      init_from=lambda params: _encoder_from(config, params, model.encoder_names()))
  state, frozen = start.state, start.frozen
  if start.fresh and config.init_from:
    print0(f"encoder from {config.init_from}")
  print0(f"{config.task}: {num_classes} classes ({c.label}), features {c.features}; trained "
         f"params {_millions(state.params)}M, frozen {_millions(frozen)}M "
         f"({', '.join(prefixes) or 'none'})")
  if cached:
    with run.scope():
      train_iter.attach(*_feature_cache(config, run.workdir, model, frozen, tokenizer,
                                        run.mesh, run.rules))

  # --- the train step --------------------------------------------------------------------------
  rngs = lambda rng: None if model.deterministic else {"dropout": rng}  # noqa: E731
  if cached:  # the head alone, on stored features; the encoder is not an argument at all
    head = head_of(model)
    logits_fn = lambda p, batch, rng: head.apply(  # noqa: E731
        {"params": p["head"]}, batch["features"], rngs=rngs(rng))
    inputs = "features"
  else:
    logits_fn = lambda p, batch, rng: model.apply(  # noqa: E731
        {"params": p}, batch["images"], rngs=rngs(rng))
    inputs = "images"
  step_fn = make_train_step(logits_fn, tx, schedule, label_smoothing=c.label_smoothing,
                            num_classes=num_classes, seed=config.seed)
  state_shardings, frozen_shardings = layout.split(layout.shardings)
  batch_shardings = {inputs: sharding.batch_sharding(run.mesh, 2 if cached else 4, run.rules),
                     "label": sharding.batch_sharding(run.mesh, 1, run.rules)}
  step_frozen, step_frozen_shardings = ({}, {}) if cached else (frozen, frozen_shardings)
  with run.scope():
    train_step = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings,
                                                step_frozen_shardings),
                         out_shardings=(state_shardings, None), donate_argnums=(0,))

  def evaluate(params):
    batch = common.fit_batch(config.evals.batch_size, run.mesh)
    eval_iter = labels_lib.build_eval_iterator(
        config.data, c.label, global_batch_size=batch, process_index=jax.process_index(),
        process_count=jax.process_count(), tokenizer=tokenizer)
    return evaluate_classifier(model, params, eval_iter, run.mesh, run.rules)

  # --- the loop --------------------------------------------------------------------------------
  num_steps = config.num_train_steps
  log = loop.Log(run, train_iter, lambda step, m: _progress_line(step, num_steps, m),
                 start.step)
  saver = loop.Saver(run, start.manager, train_iter, frozen)
  try:
    with run.scope(), loop.preemption(start.manager) as preempted:
      for step in range(start.step + 1, num_steps + 1):
        local = next(train_iter)
        batch = run.global_batch({inputs: local[inputs], "label": local["label"]})
        state, metrics = train_step(state, batch, step_frozen)
        stop = preempted(step)
        log.step(step, metrics, state, now=stop)
        if stop:
          return saver.preempted(step, state)
        if saver.due(step):
          saver.save(step, state)
        if log.eval_due(step):
          log.evaluation(step, lambda: evaluate(freeze.merge(state.params, frozen)))
      saver.wait()

    # --- final evaluation ------------------------------------------------------------------------
    with run.scope():
      results = evaluate(freeze.merge(state.params, frozen))
    results["classify/chance"] = 1.0 / num_classes
    run.writer.write_scalars(num_steps, {k: float(v) for k, v in results.items()})
    run.writer.flush()
    print0(
        f"final evaluation ({DatasetSpec.parse(data_cfg['eval']).name}, {c.label}): top-1 "
        f"{100 * results['classify/top1']:.1f}%, top-5 {100 * results['classify/top5']:.1f}% "
        f"(chance {100 / num_classes:.1f}%), {results['classify/examples']} images")
    if jax.process_index() == 0:
      (run.workdir / "final_metrics.json").write_text(json.dumps(results, indent=2))
    return results
  finally:
    start.manager.close()
    train_iter.close()


def _millions(tree) -> str:
  return f"{sum(x.size for x in jax.tree.leaves(tree)) / 1e6:.3f}"


def _prepare_manual_datasets(config, data_cfg):
  """TFDS datasets of train / eval that need manual downloads (e.g. imagenet2012) are prepared
  from config.classify.manual_dir first, by process 0."""
  manual_dir = config.classify.get("manual_dir")
  if jax.process_index() == 0 and manual_dir:
    from coca_jax.evals import manual  # pylint: disable=import-outside-toplevel
    for spec in (data_cfg["train"], data_cfg["eval"]):
      spec = DatasetSpec.parse(spec)
      if spec.format == "tfds" and not spec.path and not spec.name.startswith("coca_shapes"):
        manual.prepare(spec.name, spec.data_dir or data_cfg["data_dir"], manual_dir,
                       data_cfg["reprepare"])
  barrier("data_prepared")


def _progress_line(step, num_steps, m) -> str:
  return (f"step {step}/{num_steps} | loss {m['loss']:.4f} | train accuracy "
          f"{100 * m['accuracy']:.1f}% | lr {m['learning_rate']:.2e} | gnorm "
          f"{m['grad_norm']:.3f} | {m['step_time_s'] * 1e3:.1f} ms/step")
