"""What the step loops of pretraining and classification do around the step, written out in
each driver as

  with run.scope(), loop.preemption(manager) as preempted:
    for step in range(start.step + 1, num_steps + 1):
      state, metrics = train_step(state, batch, ...)
      log.step(step, metrics, state)            # progress line every log_every_steps
      if preempted(step): return saver.preempted(step, state)
      if saver.due(step): saver.save(step, state)
      if log.eval_due(step): log.evaluation(step, evaluate(...))

`Log` averages metrics between progress lines (with step time, examples/s, the share of time
spent waiting for input and the ETA) and raises `NonFiniteError` as `config.nonfinite` says;
`Saver` writes checkpoints (frozen params merged back in) with the data iterator's position;
`preemption` turns SIGTERM, or Orbax's preemption notice on a pod, into a checkpoint at the
current step, so that the same command resumes.
"""
import contextlib
import signal
import time
from typing import Any, Callable, Dict

from absl import logging
import jax
import numpy as np

from coca_jax import checkpoints
from coca_jax.parallel import sharding
from coca_jax.parallel.distributed import print0
from coca_jax.train.state import TrainState


class NonFiniteError(FloatingPointError):
  """A step's loss or gradient was NaN or Inf."""


def check_finite(state: TrainState, step: int, mode: str):
  """Raises NonFiniteError (mode "error") or logs a warning ("skip") when some step since the
  start had a non-finite loss or gradient; the step itself already kept the params of such
  steps unchanged."""
  count = int(sharding.to_host(state.nonfinite.count))
  if count == 0:
    return
  first = int(sharding.to_host(state.nonfinite.first_step))
  message = (f"non-finite loss or gradient at step {first + 1} ({count} such step(s) so far, "
             f"up to step {step}); those updates were not applied")
  if mode == "error":
    raise NonFiniteError(message + ". Set config.nonfinite='skip' to drop such updates and "
                         "go on.")
  logging.warning(message)


@contextlib.contextmanager
def preemption(manager):
  """Yields `preempted(step) -> bool`: whether SIGTERM arrived or, on a pod, Orbax's manager
  reports a preemption notice at this step. The previous SIGTERM handler is restored on exit."""
  received = []
  previous = signal.signal(signal.SIGTERM, lambda signum, _: received.append(signum))
  try:
    yield lambda step: bool(received) or manager.reached_preemption(step)
  finally:
    signal.signal(signal.SIGTERM, previous)


class Saver:
  """Checkpoints of a run: every `config.checkpoint.every_steps`, at the last step and on
  preemption, each with the data iterator's position and the `frozen` params merged back in."""

  def __init__(self, run, manager, train_iter, frozen):
    self.run, self.manager, self.train_iter, self.frozen = run, manager, train_iter, frozen

  def due(self, step: int) -> bool:
    """Whether `step` is a checkpoint step (every_steps, or the last)."""
    config = self.run.config
    return step % config.checkpoint.every_steps == 0 or step == config.num_train_steps

  def save(self, step: int, state: TrainState, force: bool = False):
    """Saves asynchronously after checking that no step was non-finite (NonFiniteError)."""
    check_finite(state, step, self.run.config.nonfinite)
    checkpoints.save(self.manager, step, state.checkpoint_tree(self.frozen), self.train_iter,
                     force=force or step == self.run.config.num_train_steps)

  def preempted(self, step: int, state: TrainState) -> Dict[str, int]:
    """Saves the state at `step` now and waits for it; returns {"preempted_at_step": step}."""
    self.save(step, state, force=True)
    self.manager.wait_until_finished()
    print0(f"preempted at step {step}: checkpoint saved; run the same command to resume from "
           f"{self.run.workdir}")
    return {"preempted_at_step": step}

  def wait(self):
    """Blocks until the last asynchronous save is on disk."""
    self.manager.wait_until_finished()


class Log:
  """Metrics of the steps since the last progress line: every `config.log_every_steps` (and at
  the last step) their means, with timing, go to the writer and, as
  `progress_line(step, summary) -> str`, to the console."""

  def __init__(self, run, train_iter, progress_line: Callable[[int, Dict[str, float]], str],
               start_step: int):
    self.run, self.train_iter, self.progress_line = run, train_iter, progress_line
    self.history = []
    self.last_time, self.last_step = time.perf_counter(), start_step
    self.last_wait = getattr(train_iter, "input_wait_s", 0.0)

  def step(self, step: int, metrics: Dict[str, Any], state: TrainState, now: bool = False):
    """Records a step's metrics (() float32 arrays, still on the device); at a logging step,
    or when `now`, checks finiteness and writes the summary."""
    config = self.run.config
    self.history.append(metrics)
    if not (now or step % config.log_every_steps == 0 or step == config.num_train_steps):
      return
    check_finite(state, step, config.nonfinite)
    elapsed = time.perf_counter() - self.last_time
    wait = getattr(self.train_iter, "input_wait_s", 0.0)
    summary = summarise(self.history, self.train_iter, elapsed, step - self.last_step,
                        wait - self.last_wait, config.global_batch_size,
                        config.num_train_steps - step)
    self.run.writer.write_scalars(step, summary)
    print0(self.progress_line(step, summary))
    self.history, self.last_time, self.last_step, self.last_wait = [], time.perf_counter(), \
        step, wait

  def eval_due(self, step: int) -> bool:
    """Whether to evaluate after `step`: every `config.eval_every_steps`, never at the last
    step (the final evaluation follows it)."""
    every, last = self.run.config.eval_every_steps, self.run.config.num_train_steps
    return bool(every) and step % every == 0 and step != last

  def evaluation(self, step: int, evaluate: Callable[[], Dict[str, Any]]):
    """Runs `evaluate()` and writes and prints its results; its time is left out of the step
    times."""
    start = time.perf_counter()
    results = evaluate()
    self.last_time += time.perf_counter() - start
    self.run.writer.write_scalars(step, {k: v for k, v in results.items()
                                         if isinstance(v, (int, float))})
    print0(f"eval at step {step}: " + format_results(results))


def summarise(history, train_iter, elapsed, steps, waited, batch, remaining) -> Dict[str, float]:
  """The mean of each metric over the logged steps, with timing and the data's bad records.

  elapsed, waited: seconds since the last summary and spent waiting for input; steps: steps
  since then; batch: the global batch size; remaining: steps left (for the ETA, seconds)."""
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
  """'name value, ...' of the scalar results (floats to 4 decimals); lists and dicts left out."""
  return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                   for k, v in results.items() if not isinstance(v, (list, dict)))
