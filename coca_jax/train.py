"""CoCa pretraining: `train_and_evaluate(config, workdir)`, the whole run top to bottom.

config -> processes and mesh -> data -> model and sharded train state (fresh, resumed from the
workdir, or params from `init_from`) -> one jitted, donated train step -> loop with metrics,
checkpoints, evaluation and preemption handling -> final evaluation.

`config.freeze` (param path prefixes; "contrastive_only" names the params only the contrastive
loss uses) keeps params out of the optimized state: the step takes them as a separate,
non-donated argument. Checkpoints still hold every param, so exports and eval.py read them.
Configs with `task` "probe" or "classify" train an image classifier instead (coca_jax.classify).
"""
import dataclasses
import json
import time
from typing import Any, Dict, Tuple

from absl import logging
from clu import metric_writers
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coca_jax import checkpoint, config_checks, data, distributed, freeze, loop, optim
from coca_jax import resume_rules, sharding, tokenizers, train_config
from coca_jax import train_step as train_step_lib
from coca_jax.evals import build as build_evaluators, run_evaluators
from coca_jax.model import create_model
from coca_jax.model.summary import count_params


_print, _barrier = distributed.print0, distributed.barrier
NonFiniteError = loop.NonFiniteError  # the loop raises it; kept importable from here


def _fit_names(tree, mesh, rules):
  """Keeps a leaf's logical axis names only where they fit its shape on this mesh. Optimizer
  statistics inherit their param's names even when their shape differs (Adafactor's factored
  rows and columns, its (1,) placeholders); such small leaves are replicated instead."""
  def fits(x):
    if len(x.names) != len(x.value.shape):
      return False
    spec = nn.logical_to_mesh_axes(x.names, rules)
    for size, axes in zip(x.value.shape, spec):
      axes = (axes,) if isinstance(axes, str) else (axes or ())
      if size % int(np.prod([mesh.shape[a] for a in axes])):
        return False
    return True

  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) and not fits(x) else x,
                      tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def train_and_evaluate(config, workdir) -> Dict[str, Any]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, returns the final
  metrics. Every process runs this same function."""
  config = train_config.resolve(config)
  if config.get("task", "pretrain") != "pretrain":
    from coca_jax import classify  # pylint: disable=import-outside-toplevel
    return classify.train_and_evaluate(config, workdir)
  # --- processes, config, workdir ------------------------------------------------------
  distributed.initialize(config.distributed)
  config_checks.check(config)
  workdir = epath.Path(workdir)
  resume_rules.check(config, workdir)  # before anything is written
  workdir.mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(
      str(workdir), just_logging=jax.process_index() > 0)

  # --- mesh and logical axis rules ------------------------------------------------------
  mesh = sharding.config_mesh(config)
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                for name, axes in config.logical_rules)
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.devices.size)

  # --- data ----------------------------------------------------------------------------
  tokenizer = tokenizers.load(config.data.tokenizer)
  model_cfg = config.model
  if tokenizer.vocab_size > model_cfg.text.vocab_size:
    raise ValueError(f"config.model.text.vocab_size {model_cfg.text.vocab_size} is smaller "
                     f"than the tokenizer's vocabulary ({tokenizer.vocab_size})")
  if tokenizer.pad_id != model_cfg.text.pad_id:
    raise ValueError(f"config.model.text.pad_id {model_cfg.text.pad_id} differs from the "
                     f"tokenizer's pad id {tokenizer.pad_id}")
  if jax.process_index() == 0:
    data.prepare(config.data)  # generate / convert once, before the others read
  _barrier("data_prepared")
  train_iter = data.build_train_iterator(
      config.data, global_batch_size=config.global_batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      tokenizer=tokenizer)

  # --- model and sharded train state ----------------------------------------------------
  model = create_model(config.model, deterministic=config.model.get("dropout_rate", 0) == 0)
  program = step_program(config, model, mesh, rules)
  tx, prefixes = program.tx, program.prefixes
  state_shardings = program.state_shardings
  counts = count_params(config.model)
  _print("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()
                                   if k != "logit_scale"))

  manager, state, start_step, fresh = restore_or_init(
      config, workdir, program.make_state, state_shardings, program.abstract_state, train_iter,
      mesh, rules)
  if fresh and config.init_from:
    state = _init_from(config, state, state_shardings, tx, prefixes)
  # The distillation reference: the starting params (not checkpointed). A fresh run copies
  # the params it just loaded (the state's own are donated to the step); a resumed run reads
  # init_from again.
  reference = None
  if program.distill_weight:
    reference = (jax.tree.map(jnp.copy, state["params"]) if fresh and config.init_from
                 else distillation_reference(config, state_shardings["params"]))
  # Frozen params leave the state: the step neither donates nor updates them.
  state, frozen = _split_state(state, prefixes)
  if prefixes:
    _print(f"frozen: {', '.join(prefixes)} "
           f"({sum(x.size for x in jax.tree.leaves(frozen)) / 1e6:.2f}M params, no optimizer "
           "state)")

  # --- the train step, compiled ahead of time -------------------------------------------
  _print("compiling the train step: about 15 s for configs/tiny.py on 2 CPU cores (seconds "
         "when the compilation cache holds it), minutes for the paper's models")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    t0 = time.perf_counter()
    compiled = program.lower().compile()
  memory = compiled.memory_analysis()
  if memory is not None:
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
             + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    _print(f"train step compiled in {time.perf_counter() - t0:.1f}s; memory per device "
           f"{total / 2**20:.1f} MiB (arguments {memory.argument_size_in_bytes / 2**20:.1f}, "
           f"temporaries {memory.temp_size_in_bytes / 2**20:.1f})")

  # --- evaluators ------------------------------------------------------------------------
  evaluators = build_evaluators(config, model, mesh, tokenizer)
  start_metrics = _evaluate_at_start(config, workdir, evaluators, state, frozen, mesh, rules,
                                     start_step)

  # --- the loop --------------------------------------------------------------------------
  inject = config.debug.inject_nan_at_step

  def make_batch(local, step):
    if step == inject:
      local = {**local, "images": np.full_like(local["images"], np.nan)}
    return sharding.global_batch(local, mesh, rules)

  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      state, step, preempted = loop.run(
          config, workdir, step_fn=lambda s, b: compiled(s, b, frozen, reference),
          state=state,
          frozen=frozen, train_iter=train_iter, manager=manager, writer=writer,
          start_step=start_step, make_batch=make_batch,
          progress_line=lambda step, m: _progress_line(step, config.num_train_steps, m),
          evaluate=lambda params: run_evaluators(evaluators, params, final=False))
    if preempted:
      return {"preempted_at_step": step}

    # --- final evaluation ------------------------------------------------------------------
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      final_metrics = run_evaluators(evaluators, freeze.merge(state["params"], frozen),
                                     final=True,
                                     workdir=workdir, writer=writer, step=step)
    writer.write_scalars(step, {k: v for k, v in final_metrics.items()
                                if isinstance(v, (int, float))})
    writer.flush()
    _print(_final_report(final_metrics, config, workdir, start_metrics))
    if start_metrics:
      final_metrics.update({f"start/{k}": v for k, v in start_metrics.items()})
    if jax.process_index() == 0:
      (workdir / "final_metrics.json").write_text(json.dumps(final_metrics, indent=2))
    return final_metrics
  finally:
    manager.close()
    train_iter.close()


# --- the compiled step: one builder for training and ahead-of-time compilation -------------

@dataclasses.dataclass(frozen=True)
class StepProgram:
  """What decides the compiled train step, built one way (`step_program`) for training and for
  `coca_jax.aot`.

  make_state(rng) -> a fresh state as checkpoints hold it (every param, optimizer state of the
  trainable ones); state_shardings / abstract_state: that state's layout. The jitted step
  `jitted(state, batch, frozen, reference)` takes the state without its frozen params
  (donated), the batch, the frozen params and, with `distill_weight` > 0, the reference params
  (neither donated); `abstract_args` are those four as ShapeDtypeStructs with their shardings.
  """
  tx: Any
  schedule: Any
  prefixes: Tuple[str, ...]
  distill_weight: float
  make_state: Any
  state_shardings: Any
  abstract_state: Any
  jitted: Any
  abstract_args: Tuple[Any, ...]

  def lower(self):
    """The step lowered for the abstract inputs; call under the mesh and logical rules."""
    return self.jitted.lower(*self.abstract_args)


def step_program(config, model, mesh, rules) -> StepProgram:
  """The optimizer, frozen params, state layout and jitted train step of a config on a mesh:
  `init_from` models, `freeze`, the loss weights, distillation, gradient accumulation and the
  datasets' caption weights included. Nothing is allocated (shapes only)."""
  cfg = model.cfg
  size, length = cfg.vision.image_size, config.data.text_length
  example = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32))
  abstract_params = jax.eval_shape(lambda k: model.init(k, *example)["params"],
                                   jax.random.key(0))
  prefixes = freeze_prefixes(config)
  tx = optim.create_optimizer(config.optimizer, config.num_train_steps,
                              freeze.split(nn.unbox(abstract_params), prefixes)[0])
  schedule = optim.schedule(config.optimizer, config.num_train_steps)
  make_state, state_shardings, abstract_state = state_layout(
      lambda rng: model.init(rng, *example)["params"], tx, prefixes, mesh, rules)
  distill_weight = float(config.loss.get("distill_weight", 0.0) or 0.0)

  # The step's arguments: the state less its frozen params, the batch, the frozen params and
  # the distillation reference (all params, only with a distillation weight).
  trainable, frozen = freeze.split(state_shardings["params"], prefixes)
  trainable_shardings = {**state_shardings, "params": trainable}
  abstract_trainable_params, abstract_frozen = freeze.split(abstract_state["params"], prefixes)
  abstract_trainable = {**abstract_state, "params": abstract_trainable_params}
  reference_shardings = state_shardings["params"] if distill_weight else None
  abstract_reference = abstract_state["params"] if distill_weight else None
  batch = config.global_batch_size
  shapes = {"images": ((batch, size, size, 3), jnp.float32), "text": ((batch, length), jnp.int32),
            "caption_weight": ((batch,), jnp.float32)}  # datasets' caption-loss weights
  batch_shardings = {k: sharding.batch_sharding(mesh, len(shapes[k][0]), rules)
                     for k in data.batch_fields(config.data)}
  abstract_batch = {k: jax.ShapeDtypeStruct(*shapes[k], sharding=s)
                    for k, s in batch_shardings.items()}

  step_fn = train_step_lib.make_train_step(
      model, tx, schedule, pad_id=cfg.text.pad_id,
      contrastive_weight=config.loss.contrastive_weight,
      caption_weight=config.loss.caption_weight, distill_weight=distill_weight,
      accum_steps=config.grad_accum_steps, seed=config.seed)
  jitted = jax.jit(step_fn, in_shardings=(trainable_shardings, batch_shardings, frozen,
                                          reference_shardings),
                   out_shardings=(trainable_shardings, None), donate_argnums=(0,))
  return StepProgram(tx, schedule, prefixes, distill_weight, make_state, state_shardings,
                     abstract_state, jitted,
                     (abstract_trainable, abstract_batch, abstract_frozen, abstract_reference))


# --- helpers of the loop ---------------------------------------------------------------------

def freeze_prefixes(config):
  """config.freeze with the named groups ("contrastive_only", "embedding_path") expanded for
  this model."""
  prefixes = []
  for name in config.get("freeze", ()) or ():
    if name == "contrastive_only":
      prefixes += freeze.contrastive_only(create_model(config.model).cfg)
    elif name == "embedding_path":
      prefixes += freeze.embedding_path()
    else:
      prefixes.append(name)
  return tuple(prefixes)


def _split_state(state, prefixes):
  trainable, frozen = freeze.split(state["params"], prefixes)
  return {**state, "params": trainable}, frozen


def state_layout(init_params, tx, prefixes, mesh, rules):
  """The train state as checkpoints hold it: every param, the optimizer state of the trainable
  ones only (`prefixes` name the frozen ones). Returns (init, shardings, abstract state);
  `init(rng)` builds a fresh state laid out on the mesh (call it under the mesh and rules)."""
  def init_boxed(rng):
    params = init_params(rng)
    trainable, _ = freeze.split(params, prefixes)
    return {**train_step_lib.init_state(trainable, tx), "params": params}

  boxed_state = _fit_names(jax.eval_shape(init_boxed, jax.random.key(0)), mesh, rules)
  shardings = sharding.logical_shardings(boxed_state, mesh, rules)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.unbox(boxed_state), shardings)
  init = lambda rng: nn.unbox(_fit_names(init_boxed(rng), mesh, rules))
  return init, shardings, abstract_state


def restore_or_init(config, workdir, init, shardings, abstract_state, train_iter, mesh, rules):
  """(checkpoint manager, state, start step, fresh): the workdir's latest checkpoint (with the
  data iterator's position), else a fresh state from `config.seed` at step 0. Writes
  config.json and run_config.json once the state is settled. Raises ValueError when the
  workdir holds checkpoints and none restores (see `resume_rules`)."""
  manager = checkpoint.make_manager(workdir, config.checkpoint.max_to_keep,
                                    config.checkpoint.async_save)
  state, start_step = checkpoint.restore_latest(manager, abstract_state, train_iter)
  if state is None and manager.all_steps():
    manager.close()
    raise ValueError(
        f"{workdir}/checkpoints holds steps {sorted(manager.all_steps())}, but none could be "
        "restored (the errors above say why). They are left as they are: pass "
        "--config.checkpoint.new_run=True to set them aside and start a new run here.")
  resume_rules.record(config, workdir)  # what the checkpoints from here on are written with
  if state is not None:
    _print(f"resumed from {workdir}/checkpoints/{start_step}")
    return manager, state, start_step, False
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
  return manager, state, 0, True


def state_from_params(params, tx, prefixes, shardings):
  """A state around the given params, with fresh optimizer statistics for the trainable ones."""
  params = jax.device_put(params, shardings["params"])
  return jax.jit(
      lambda p: {**train_step_lib.init_state(freeze.split(p, prefixes)[0], tx), "params": p},
      out_shardings=shardings)(params)


def _init_from(config, state, state_shardings, tx, prefixes=()):
  """Params from a checkpoint, an export or a converted open_clip model; fresh optimizer."""
  params, source_config = checkpoint.load_params(config.init_from)
  params = checkpoint.adapt_params(params, source_config, config.model)
  checkpoint.check_params_fit(params, state["params"], f"config.init_from={config.init_from}")
  new_state = state_from_params(params, tx, prefixes, state_shardings)
  _print(f"initialised params from {config.init_from}")
  return new_state


def distillation_reference(config, shardings):
  """The starting params (config.init_from, fitted to config.model) laid out as `shardings`:
  what `loss.distill_weight` pulls the embeddings toward. Raises ValueError without
  init_from."""
  if not config.init_from:
    raise ValueError("config.loss.distill_weight > 0 distils toward the starting model: set "
                     "config.init_from")
  params, source_config = checkpoint.load_params(config.init_from)
  params = checkpoint.adapt_params(params, source_config, config.model)
  return jax.device_put(params, shardings)


START_METRICS = "start_metrics.json"


def _evaluate_at_start(config, workdir, evaluators, state, frozen, mesh, rules, start_step):
  """config.evals.at_start: the final evaluators run once on the starting params of a fresh
  run (saved to WORKDIR/start_metrics.json, read back on resume), so that the final report
  shows each figure before and after. {} when not asked for."""
  if not config.evals.get("at_start", False):
    return {}
  path = workdir / START_METRICS
  if start_step > 0 and path.exists():
    return json.loads(path.read_text())
  _print("evaluating the starting params (config.evals.at_start)")
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    results = run_evaluators(evaluators, freeze.merge(state["params"], frozen), final=True)
  results = {k: v for k, v in results.items() if not k.endswith("/examples")}
  if jax.process_index() == 0:
    path.write_text(json.dumps(results, indent=2))
  return results


def _progress_line(step, num_steps, m) -> str:
  eta = m["eta_s"]
  distill = f", distill {m['loss/distill']:.4f}" if "loss/distill" in m else ""
  return (f"step {step}/{num_steps} | loss {m['loss/total']:.4f} (con {m['loss/contrastive']:.4f}"
          f", cap {m['loss/caption']:.4f}{distill}) | lr {m['learning_rate']:.2e} | "
          f"temp {m['logit_scale']:.2f} | gnorm {m['grad_norm']:.3f} | "
          f"{m['examples_per_s']:.1f} ex/s | {m['step_time_s'] * 1e3:.0f} ms/step | "
          f"input wait {100 * m['input_wait_fraction']:.1f}% | "
          f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")


# (result key, label, shown as a percentage) for the before/after lines of the final report.
_BEFORE_AFTER = (("zeroshot/top1", "zero-shot top-1", True),
                 ("captions/attribute_score", "caption attribute score", True),
                 ("captions/attribute_recall", "caption attribute recall", True),
                 ("captions/cider", "cider", False), ("captions/bleu4", "bleu4", False),
                 ("captions/clip_s", "clip-s", False),
                 ("val/contrastive", "validation contrastive loss", False),
                 ("val/caption", "validation caption loss", False))


def _before_after(results: Dict[str, Any], start: Dict[str, Any]):
  """'label  before -> after' lines for the figures both evaluations have."""
  lines = []
  for key, label, percent in _BEFORE_AFTER:
    if key in results and key in start:
      show = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3f}")
      lines.append(f"    {label:<28} {show(start[key]):>8} -> {show(results[key])}")
  return ["  before -> after this run (the starting params, evaluated the same way)"] + lines \
      if lines else []


def _final_report(results: Dict[str, Any], config, workdir, start=None) -> str:
  """The end-of-run summary people read: accuracy next to chance, caption score next to the
  blank-image baseline, a few captions next to the truth; with `start` (the starting params'
  results, config.evals.at_start) each figure before and after."""
  eval_set = config.data.eval
  name = eval_set.get("name", "?") if hasattr(eval_set, "get") else str(eval_set)
  lines = [f"final evaluation on held-out data ({name}"
           + (", a synthetic dataset generated by the package)" if "coca_shapes" in name
              else ")")]
  if "zeroshot/top1" in results:
    named = (config.evals.get("datasets") or {}).get("zeroshot", "")
    lines.append(f"  zero-shot top-1 {100 * results['zeroshot/top1']:.1f}% "
                 f"(chance {100 * results['zeroshot/chance']:.1f}%), top-5 "
                 f"{100 * results['zeroshot/top5']:.1f}%, "
                 f"{int(results['zeroshot/examples'])} images" + (f" of {named}" if named
                                                                   else ""))
  if "captions/attribute_score" in results:
    lines.append(f"  caption attribute score {100 * results['captions/attribute_score']:.1f}% "
                 "(the same decoder given blank image tokens: "
                 f"{100 * results['captions/blank_image_attribute_score']:.1f}%)")
  if "captions/attribute_recall" in results:
    lines.append(f"  caption attribute recall {100 * results['captions/attribute_recall']:.1f}% "
                 "of each scene's attributes (blank image tokens: "
                 f"{100 * results['captions/blank_image_attribute_recall']:.1f}%)")
  for key in ("captions/cider", "captions/bleu4"):
    if key in results:
      lines.append(f"  {key.split('/')[1]} {results[key]:.3f}")
  for key in ("val/contrastive", "val/caption"):
    if key in results:
      lines.append(f"  validation {key.split('/')[1]} loss {results[key]:.4f}")
  lines += _before_after(results, start or {})
  examples = results.get("captions/examples") or []
  if examples:
    lines.append("  generated caption | true caption")
    for example in examples:
      if isinstance(example, dict):
        example = (example.get("generated"), example.get("reference"))
      lines.append(f"    {example[0]} | {example[1]}")
  gallery = epath.Path(workdir) / "caption_gallery.png"
  if gallery.exists():
    lines.append(f"  caption gallery: {gallery}")
  return "\n".join(lines)
