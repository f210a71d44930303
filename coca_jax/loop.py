"""The step loop pretraining and classification share: one compiled step per batch; every
`log_every_steps` a progress line and metrics (step time, examples/s, the time spent waiting for
input, ETA); checkpoints every `checkpoint.every_steps` and at the end; evaluation every
`eval_every_steps`; preemption (SIGTERM, or Orbax's preemption notice on a pod) saves a
checkpoint at the current step and returns, so that the same command resumes.
"""
import signal
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import numpy as np

from coca_jax import checkpoint, freeze, sharding
from coca_jax.distributed import print0


class NonFiniteError(FloatingPointError):
  """A step's loss or gradient was NaN or Inf."""


def run(config, workdir, *, step_fn: Callable, state, frozen, train_iter, manager, writer,
        start_step: int, make_batch: Callable, progress_line: Callable,
        evaluate: Optional[Callable] = None):
  """Runs steps from `start_step` to `config.num_train_steps`; returns (state, the step it
  stopped at, whether it was preempted).

  step_fn(state, global batch) -> (state, metrics); make_batch(local batch, step) -> global
  batch; progress_line(step, summary) -> str; evaluate(all params) -> results, run every
  `config.eval_every_steps` (not at the end: the caller's final evaluation does that).
  Checkpoints hold the state with the `frozen` params merged back in. Call under the mesh.
  """
  stop = {"signal": None}

  def on_sigterm(signum, _):
    stop["signal"] = signum
  previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
  num_steps = config.num_train_steps
  merged = lambda s: {**s, "params": freeze.merge(s["params"], frozen)}  # noqa: E731
  history, step = [], start_step
  last_log_time, last_log_step = time.perf_counter(), start_step
  last_wait = getattr(train_iter, "input_wait_s", 0.0)
  try:
    while step < num_steps:
      state, metrics = step_fn(state, make_batch(next(train_iter), step))
      step += 1
      history.append(metrics)
      is_last = step == num_steps
      preempted = stop["signal"] is not None or manager.reached_preemption(step)

      if step % config.log_every_steps == 0 or is_last or preempted:
        check_finite(state, step, config.nonfinite)
        now, wait = time.perf_counter(), getattr(train_iter, "input_wait_s", 0.0)
        summary = summarise(history, train_iter, now - last_log_time, step - last_log_step,
                            wait - last_wait, config.global_batch_size, num_steps - step)
        writer.write_scalars(step, summary)
        print0(progress_line(step, summary))
        history, last_log_time, last_log_step, last_wait = [], now, step, wait

      if preempted:
        checkpoint.save(manager, step, merged(state), train_iter, force=True)
        manager.wait_until_finished()
        print0(f"preempted at step {step}: checkpoint saved; run the same command to resume "
               f"from {workdir}")
        return state, step, True

      if step % config.checkpoint.every_steps == 0 or is_last:
        check_finite(state, step, config.nonfinite)
        checkpoint.save(manager, step, merged(state), train_iter, force=is_last)

      if (evaluate is not None and config.eval_every_steps
          and step % config.eval_every_steps == 0 and not is_last):
        start = time.perf_counter()
        results = evaluate(merged(state)["params"])
        last_log_time += time.perf_counter() - start  # step times leave evaluation out
        writer.write_scalars(step, {k: v for k, v in results.items()
                                    if isinstance(v, (int, float))})
        print0(f"eval at step {step}: " + format_results(results))
    manager.wait_until_finished()
    return state, step, False
  finally:
    signal.signal(signal.SIGTERM, previous_handler)


def check_finite(state, step: int, mode: str):
  """Raises (mode "error") or warns ("skip") when some step since the start had a non-finite
  loss or gradient; the step itself already kept the params of such steps unchanged."""
  nonfinite = jax.tree.map(lambda x: int(sharding.to_host(x)), state["nonfinite"])
  if nonfinite["count"] == 0:
    return
  message = (f"non-finite loss or gradient at step {nonfinite['first_step'] + 1} "
             f"({nonfinite['count']} such step(s) so far, up to step {step}); those updates "
             "were not applied")
  if mode == "error":
    raise NonFiniteError(message + ". Set config.nonfinite='skip' to drop such updates and "
                         "go on.")
  logging.warning(message)


def summarise(history, train_iter, elapsed, steps, waited, batch, remaining) -> Dict[str, float]:
  """The mean of each metric over the logged steps, with timing and the data's bad records."""
  metrics = jax.tree.map(lambda *xs: float(np.mean([sharding.to_host(x) for x in xs])),
                         *history)
  step_time = elapsed / max(steps, 1)
  metrics.update({"step_time_s": step_time, "examples_per_s": batch / step_time,
                  "input_wait_fraction": waited / max(elapsed, 1e-9),
                  "eta_s": remaining * step_time})
  stats = train_iter.stats() if hasattr(train_iter, "stats") else {}
  for key, value in stats.items():
    if key.startswith("bad_records"):
      metrics[f"data/{key}"] = float(value)
  return metrics


def format_results(results: Dict[str, Any]) -> str:
  return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                   for k, v in results.items() if not isinstance(v, (list, dict)))
