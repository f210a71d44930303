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

from clu import metric_writers
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from coca_jax import checkpoint, distributed, feature_cache, freeze, loop, optim, sharding
from coca_jax import resume_rules, tokenizers, train_config
from coca_jax import train as train_lib
from coca_jax.classifier import FEATURES, ImageClassifier, head_of
from coca_jax.data import labels as labels_lib
from coca_jax.data.config import resolve as resolve_data
from coca_jax.data.sources import DatasetSpec
from coca_jax.evals import common
from coca_jax.evals.zero_shot import topk_hits
from coca_jax.model.config import from_dict

TASKS = ("probe", "classify")
_print, _barrier = distributed.print0, distributed.barrier


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
  prefixes = list(config.classify.get("freeze", ()) or ())
  if config.task == "probe":
    prefixes += [n for n in model.encoder_names() if n not in prefixes]
  return tuple(prefixes)


def make_train_step(logits_fn, tx, schedule, *, label_smoothing: float, num_classes: int,
                    seed: int = 0):
  """train_step(state, batch, frozen) -> (state, metrics); the state's params are the
  trainable ones, `frozen` the others. `logits_fn(params, batch, rng)`: the classifier's
  logits (on images, or on cached features) with all params."""
  def train_step(state, batch, frozen):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)

    def loss_fn(p):
      logits = logits_fn(freeze.merge(p, frozen), batch, rng)
      targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes),
                                    label_smoothing)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_params = optax.apply_updates(state["params"], updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    bad = jnp.logical_not(finite)
    nonfinite = state["nonfinite"]
    new_state = {
        "params": keep(new_params, state["params"]),
        "opt_state": keep(opt_state, state["opt_state"]),
        "step": step + 1,
        "nonfinite": {"count": nonfinite["count"] + bad.astype(jnp.int32),
                      "first_step": jnp.where(bad & (nonfinite["first_step"] < 0), step,
                                              nonfinite["first_step"])},
    }
    accuracy = (jnp.argmax(logits, -1) == batch["label"]).mean()
    return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm,
                       "learning_rate": schedule(step), "finite": finite.astype(jnp.float32)}

  return train_step


def evaluate(model, params, eval_iter, mesh, rules) -> Dict[str, float]:
  """Top-1 / top-5 accuracy over every example of the eval iterator."""
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
  loaded, source_cfg = checkpoint.load_params(config.init_from)
  loaded = checkpoint.adapt_params(loaded, source_cfg, config.model)
  out = dict(params)
  for name in encoder_names:
    checkpoint.check_params_fit({name: loaded.get(name, {})}, {name: params[name]},
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
    _print(f"feature cache: {len(found[1])} examples from {workdir / feature_cache.DIRNAME}")
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
  _barrier("feature_cache_saved")
  _print(f"feature cache: {features.shape[0]} examples x {features.shape[1]} features in "
         f"{time.perf_counter() - start:.1f}s")
  return features, labels


def train_and_evaluate(config, workdir) -> Dict[str, Any]:
  """Trains the classifier (resuming from `workdir`), evaluates top-1 / top-5, returns them."""
  # --- processes, config, workdir ------------------------------------------------------
  config = train_config.resolve(config)
  distributed.initialize(config.distributed)
  check(config)
  model_cfg = from_dict(config.model)
  data_cfg = resolve_data(config.data)
  if data_cfg["image_size"] != model_cfg.vision.image_size:
    raise ValueError(f"config.data.image_size: {data_cfg['image_size']} differs from "
                     f"model.vision.image_size {model_cfg.vision.image_size}")
  workdir = epath.Path(workdir)
  resume_rules.check(config, workdir)  # before anything is written
  workdir.mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(
      str(workdir), just_logging=jax.process_index() > 0)
  mesh = sharding.config_mesh(config)
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                for name, axes in config.logical_rules)

  # --- data ----------------------------------------------------------------------------
  c = config.classify
  if jax.process_index() == 0 and c.get("manual_dir"):
    from coca_jax.evals import manual  # pylint: disable=import-outside-toplevel
    for spec in (data_cfg["train"], data_cfg["eval"]):
      spec = DatasetSpec.parse(spec)
      if spec.format == "tfds" and not spec.path and not spec.name.startswith("coca_shapes"):
        manual.prepare(spec.name, spec.data_dir or data_cfg["data_dir"], c.manual_dir,
                       data_cfg["reprepare"])
  _barrier("data_prepared")
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

  # --- model and sharded state -----------------------------------------------------------
  model = ImageClassifier(model_cfg, num_classes, c.features, c.hidden_dim, c.head_dropout,
                          deterministic=(c.head_dropout == 0 and model_cfg.dropout_rate == 0))
  size = model_cfg.vision.image_size
  example = jnp.zeros((1, size, size, 3))
  prefixes = frozen_prefixes(config, model)
  abstract_params = nn.unbox(jax.eval_shape(lambda k: model.init(k, example)["params"],
                                            jax.random.key(0)))
  tx = optim.create_optimizer(config.optimizer, config.num_train_steps,
                              freeze.split(abstract_params, prefixes)[0])
  schedule = optim.schedule(config.optimizer, config.num_train_steps)

  make_state, shardings, abstract_state = train_lib.state_layout(
      lambda rng: model.init(rng, example)["params"], tx, prefixes, mesh, rules)
  manager, state, start_step, fresh = train_lib.restore_or_init(
      config, workdir, make_state, shardings, abstract_state, train_iter, mesh, rules)
  if fresh and config.init_from:
    params = _encoder_from(config, jax.tree.map(np.asarray, state["params"]),
                           model.encoder_names())
    state = train_lib.state_from_params(params, tx, prefixes, shardings)
    _print(f"encoder from {config.init_from}")
  trainable_params, frozen = freeze.split(state["params"], prefixes)
  state = {**state, "params": trainable_params}
  state_shardings = {**shardings, "params": freeze.split(shardings["params"], prefixes)[0]}
  frozen_shardings = freeze.split(shardings["params"], prefixes)[1]
  n_frozen = sum(x.size for x in jax.tree.leaves(frozen))
  n_trained = sum(x.size for x in jax.tree.leaves(trainable_params))
  _print(f"{config.task}: {num_classes} classes ({c.label}), features {c.features}; trained "
         f"params {n_trained / 1e6:.3f}M, frozen {n_frozen / 1e6:.3f}M "
         f"({', '.join(prefixes) or 'none'})")

  if cached:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      train_iter.attach(*_feature_cache(config, workdir, model, frozen, tokenizer, mesh, rules))

  # --- the train step ----------------------------------------------------------------------
  rngs = lambda rng: None if model.deterministic else {"dropout": rng}  # noqa: E731
  if cached:  # the head alone, on stored features; the encoder is not an argument at all
    head = head_of(model)
    logits_fn = lambda p, batch, rng: head.apply(  # noqa: E731
        {"params": p["head"]}, batch["features"], rngs=rngs(rng))
    inputs = "features", sharding.batch_sharding(mesh, 2, rules)
  else:
    logits_fn = lambda p, batch, rng: model.apply(  # noqa: E731
        {"params": p}, batch["images"], rngs=rngs(rng))
    inputs = "images", sharding.batch_sharding(mesh, 4, rules)
  step_fn = make_train_step(logits_fn, tx, schedule, label_smoothing=c.label_smoothing,
                            num_classes=num_classes, seed=config.seed)
  batch_shardings = {inputs[0]: inputs[1], "label": sharding.batch_sharding(mesh, 1, rules)}
  step_frozen, step_frozen_shardings = ({}, {}) if cached else (frozen, frozen_shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings,
                                              step_frozen_shardings),
                       out_shardings=(state_shardings, None), donate_argnums=(0,))

  # --- the loop --------------------------------------------------------------------------
  def run_eval(params):
    batch = common.fit_batch(config.evals.batch_size, mesh)
    eval_iter = labels_lib.build_eval_iterator(
        config.data, c.label, global_batch_size=batch, process_index=jax.process_index(),
        process_count=jax.process_count(), tokenizer=tokenizer)
    return evaluate(model, params, eval_iter, mesh, rules)

  def make_batch(local, step):
    del step
    return sharding.global_batch({inputs[0]: local[inputs[0]], "label": local["label"]}, mesh,
                                 rules)

  def progress_line(step, m):
    return (f"step {step}/{config.num_train_steps} | loss {m['loss']:.4f} | train accuracy "
            f"{100 * m['accuracy']:.1f}% | lr {m['learning_rate']:.2e} | gnorm "
            f"{m['grad_norm']:.3f} | {m['step_time_s'] * 1e3:.1f} ms/step")

  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state, step, preempted = loop.run(
          config, workdir, step_fn=lambda s, b: compiled(s, b, step_frozen), state=state,
          frozen=frozen, train_iter=train_iter, manager=manager, writer=writer,
          start_step=start_step, make_batch=make_batch, progress_line=progress_line,
          evaluate=run_eval)
    if preempted:
      return {"preempted_at_step": step}

    # --- evaluation --------------------------------------------------------------------------
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      results = run_eval(freeze.merge(state["params"], frozen))
    results["classify/chance"] = 1.0 / num_classes
    writer.write_scalars(step, {k: float(v) for k, v in results.items()})
    writer.flush()
    _print(
        f"final evaluation ({DatasetSpec.parse(data_cfg['eval']).name}, {c.label}): top-1 "
        f"{100 * results['classify/top1']:.1f}%, top-5 {100 * results['classify/top5']:.1f}% "
        f"(chance {100 / num_classes:.1f}%), {results['classify/examples']} images")
    if jax.process_index() == 0:
      (workdir / "final_metrics.json").write_text(json.dumps(results, indent=2))
    return results
  finally:
    manager.close()
    train_iter.close()
