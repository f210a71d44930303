"""CoCa pretraining: `train_and_evaluate(config, workdir)`, the whole run top to bottom.

config -> processes and mesh -> data -> model and sharded train state (fresh, resumed from the
workdir, or params from `init_from`) -> one jitted, donated train step -> the loop with metrics,
checkpoints, evaluation and preemption -> final evaluation and report.

`config.freeze` (param path prefixes; "contrastive_only" and "embedding_path" name groups) keeps
params out of the optimized state: the step takes them as a separate, non-donated argument.
Checkpoints still hold every param, so exports and eval.py read them. With
`loss.distill_weight`, the starting params are a fourth, non-donated argument (never
checkpointed: a resumed run reads `init_from` again).
"""
import json
import time
from typing import Any, Dict

from etils import epath
import jax
import jax.numpy as jnp

from coca_jax import checkpoints, data, tokenizers
from coca_jax.evals import build as build_evaluators, run_evaluators
from coca_jax.model import adapt, create_model
from coca_jax.parallel.distributed import barrier, print0
from coca_jax.tools.summary import count_params
from coca_jax.train import config_checks, freeze, loop, program as program_lib, setup


def train_and_evaluate(config, workdir) -> Dict[str, Any]:
  """Pretrains CoCa (resuming from `workdir` if it holds checkpoints), evaluates, returns the
  final metrics ({"preempted_at_step": step} when preempted). Every process runs this same
  function. Raises ValueError for a config or workdir that cannot be run, NonFiniteError on a
  non-finite step with config.nonfinite "error"."""
  # --- processes, config, workdir, mesh --------------------------------------------------------
  run = setup.start(config, workdir, config_checks.check)
  config = run.config

  # --- data ------------------------------------------------------------------------------------
  tokenizer = tokenizers.load(config.data.tokenizer)
  _check_tokenizer(tokenizer, config.model)
  if jax.process_index() == 0:
    data.prepare(config.data)  # generate / convert once, before the others read
  barrier("data_prepared")
  train_iter = data.build_train_iterator(
      config.data, global_batch_size=config.global_batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      tokenizer=tokenizer)

  # --- model, train state and the compiled step ------------------------------------------------
  model = create_model(config.model, deterministic=config.model.get("dropout_rate", 0) == 0)
  print0("parameters: " + ", ".join(f"{k} {v / 1e6:.2f}M"
                                   for k, v in count_params(config.model).items()
                                   if k != "logit_scale"))
  program = program_lib.step_program(config, model, run.mesh, run.rules)
  start = setup.restore_or_init(run, program.layout, train_iter,
                                init_from=lambda params: params_from_init_from(config, params))
  state, frozen = start.state, start.frozen
  if start.fresh and config.init_from:
    print0(f"initialised params from {config.init_from}")
  if frozen:
    print0(f"frozen: {', '.join(program.layout.prefixes)} "
           f"({sum(x.size for x in jax.tree.leaves(frozen)) / 1e6:.2f}M params, no optimizer "
           "state)")
  reference = None  # the distillation reference: the starting params, not checkpointed
  if program.distill_weight:
    reference = (jax.tree.map(jnp.copy, freeze.merge(state.params, frozen))
                 if start.fresh and config.init_from  # a copy: the state's own are donated
                 else distillation_reference(config, program.layout.shardings["params"]))
  print0("compiling the train step: about 15 s for configs/tiny.py on 2 CPU cores (seconds "
         "when the compilation cache holds it), minutes for the paper's models")
  with run.scope():
    t0 = time.perf_counter()
    train_step = program.lower().compile()
  print0(_compiled_line(train_step, time.perf_counter() - t0))

  # --- evaluators --------------------------------------------------------------------------------
  evaluators = build_evaluators(config, model, run.mesh, tokenizer)
  start_metrics = _evaluate_at_start(run, evaluators, freeze.merge(state.params, frozen),
                                     start.step)

  # --- the loop ----------------------------------------------------------------------------------
  num_steps = config.num_train_steps
  log = loop.Log(run, train_iter, lambda step, m: _progress_line(step, num_steps, m), start.step)
  saver = loop.Saver(run, start.manager, train_iter, frozen)
  try:
    with run.scope(), loop.preemption(start.manager) as preempted:
      for step in range(start.step + 1, num_steps + 1):
        batch = run.global_batch(next(train_iter))
        state, metrics = train_step(state, batch, frozen, reference)
        stop = preempted(step)
        log.step(step, metrics, state, now=stop)
        if stop:
          return saver.preempted(step, state)
        if saver.due(step):
          saver.save(step, state)
        if log.eval_due(step):
          log.evaluation(step, lambda: run_evaluators(
              evaluators, freeze.merge(state.params, frozen), final=False))
      saver.wait()

    # --- final evaluation and report -------------------------------------------------------------
    with run.scope():
      final_metrics = run_evaluators(evaluators, freeze.merge(state.params, frozen),
                                     final=True, workdir=run.workdir, writer=run.writer,
                                     step=num_steps)
    run.writer.write_scalars(num_steps, {k: v for k, v in final_metrics.items()
                                         if isinstance(v, (int, float))})
    run.writer.flush()
    print0(_final_report(final_metrics, config, run.workdir, start_metrics))
    if start_metrics:
      final_metrics.update({f"start/{k}": v for k, v in start_metrics.items()})
    if jax.process_index() == 0:
      (run.workdir / "final_metrics.json").write_text(json.dumps(final_metrics, indent=2))
    return final_metrics
  finally:
    start.manager.close()
    train_iter.close()


# --- helpers of the driver ------------------------------------------------------------------------

def _check_tokenizer(tokenizer, model_config):
  """Raises ValueError when the tokenizer's vocabulary or pad id does not fit the model's."""
  if tokenizer.vocab_size > model_config.text.vocab_size:
    raise ValueError(f"config.model.text.vocab_size {model_config.text.vocab_size} is smaller "
                     f"than the tokenizer's vocabulary ({tokenizer.vocab_size})")
  if tokenizer.pad_id != model_config.text.pad_id:
    raise ValueError(f"config.model.text.pad_id {model_config.text.pad_id} differs from the "
                     f"tokenizer's pad id {tokenizer.pad_id}")


def _compiled_line(compiled, seconds: float) -> str:
  """'train step compiled in Ns; memory per device ...' (XLA's memory analysis, MiB)."""
  memory = compiled.memory_analysis()
  if memory is None:
    return f"train step compiled in {seconds:.1f}s"
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return (f"train step compiled in {seconds:.1f}s; memory per device {total / 2**20:.1f} MiB "
          f"(arguments {memory.argument_size_in_bytes / 2**20:.1f}, temporaries "
          f"{memory.temp_size_in_bytes / 2**20:.1f})")


def _starting_params(config):
  """config.init_from's params (a checkpoint, an export or a converted open_clip model) fitted
  to config.model (host arrays)."""
  params, source_config = checkpoints.load_params(config.init_from)
  return adapt.adapt_params(params, source_config, config.model)


def params_from_init_from(config, expected):
  """config.init_from's params, checked against `expected` (this model's params: arrays or
  ShapeDtypeStructs). Raises ValueError naming every param that does not fit."""
  params = _starting_params(config)
  adapt.check_params_fit(params, expected, f"config.init_from={config.init_from}")
  return params


def distillation_reference(config, shardings):
  """The starting params (config.init_from, fitted to config.model) laid out as `shardings`:
  what `loss.distill_weight` pulls the embeddings toward. Raises ValueError without
  init_from."""
  if not config.init_from:
    raise ValueError("config.loss.distill_weight > 0 distils toward the starting model: set "
                     "config.init_from")
  return jax.device_put(_starting_params(config), shardings)


START_METRICS = "start_metrics.json"


def _evaluate_at_start(run, evaluators, params, start_step):
  """config.evals.at_start: the final evaluators run once on the starting params of a fresh
  run (saved to WORKDIR/start_metrics.json, read back on resume), so that the final report
  shows each figure before and after. {} when not asked for."""
  if not run.config.evals.get("at_start", False):
    return {}
  path = run.workdir / START_METRICS
  if start_step > 0 and path.exists():
    return json.loads(path.read_text())
  print0("evaluating the starting params (config.evals.at_start)")
  with run.scope():
    results = run_evaluators(evaluators, params, final=True)
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
