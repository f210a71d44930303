"""Training checkpoints on disk: an Orbax CheckpointManager of WORKDIR/checkpoints/<step>/ with
the train state tree ("state") and the data iterator's position ("data"); the newest readable
step restored, an unreadable one reported and passed over; params read from a workdir, one
checkpoint step or a params-only directory (`params_dir.py`) alike.

Loading params needs neither TensorFlow nor Grain (they are imported only to save or restore a
training run's data iterator).
"""
import contextlib
import json
import logging as py_logging
from typing import Any, Optional, Tuple

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from coca_jax.checkpoints import params_dir
from coca_jax.model.config import from_dict


def make_manager(workdir, max_to_keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  """An Orbax CheckpointManager over WORKDIR/checkpoints with two items per step, "state"
  and "data", keeping the newest `max_to_keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", options=options,
                               item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, force=False) -> bool:
  """Saves asynchronously; the state's arrays must be finite (the caller checks)."""
  from coca_jax.checkpoints.data_iterator import IteratorSave  # pylint: disable=g-import-not-at-top
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    data=IteratorSave(data_iter)),
                      force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iter
                   ) -> Tuple[Optional[Any], Optional[int]]:
  """Restores the newest readable checkpoint onto `abstract_state`'s shardings.

  An unreadable checkpoint (truncated file, missing piece) is reported and the previous one is
  tried; once an older one restores, the unreadable newer ones are moved aside to
  CHECKPOINTS/<step>.unreadable (kept for inspection, and so that the resumed run can write
  those steps again). Returns (state, step), or (None, None) when there is nothing to resume.
  """
  # pylint: disable-next=g-import-not-at-top
  from coca_jax.checkpoints.data_iterator import IteratorRestore
  unreadable, result = [], (None, None)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=IteratorRestore(data_iter)))
    except Exception as e:  # pylint: disable=broad-except
      logging.error("checkpoint at step %d is unreadable (%s: %s); falling back to the "
                    "previous one", step, type(e).__name__, str(e)[:500])
      unreadable.append(step)
      continue
    result = restored["state"], step
    break
  if unreadable and result[1] is not None:  # none readable: all left as they are, for the
    _set_aside(manager, unreadable)          # caller to refuse (a changed config, say)
  return result


def _set_aside(manager: ocp.CheckpointManager, steps) -> None:
  """Renames CHECKPOINTS/<step> to <step>.unreadable (a name Orbax does not take for a step);
  process 0 renames, then every process re-reads the step list."""
  directory = epath.Path(manager.directory)
  if jax.process_index() == 0:
    for step in steps:
      target, copy = directory / f"{step}.unreadable", 1
      while target.exists():
        copy += 1
        target = directory / f"{step}.unreadable{copy}"
      (directory / str(step)).rename(target)
      logging.warning("moved the unreadable checkpoint %s aside to %s", directory / str(step),
                      target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("coca_jax: unreadable checkpoints set aside")
  manager.reload()


class _DropMissingMetadata(py_logging.Filter):
  """Orbax warns "Metadata file does not exist" when one item of a checkpoint step is read on
  its own: the step's metadata sits a level up. Nothing is wrong and nothing can be done."""

  def filter(self, record):
    return "Metadata file does not exist" not in record.getMessage()


@contextlib.contextmanager
def _without_missing_metadata_warning():
  logger, dropper = py_logging.getLogger("absl"), _DropMissingMetadata()
  logger.addFilter(dropper)
  try:
    yield
  finally:
    logger.removeFilter(dropper)


def latest_state_dir(checkpoints: epath.Path) -> epath.Path:
  """CHECKPOINTS/<newest step>/state among the steps that have one; FileNotFoundError if
  none does."""
  steps = sorted((int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()),
                 reverse=True)
  for step in steps:
    state = checkpoints / str(step) / "state"
    if state.exists():
      return state
  raise FileNotFoundError(f"no checkpoint in {checkpoints}")


def load_params(path) -> Tuple[Any, Any]:
  """(params as host arrays, ModelConfig) from any of: a params-only directory (export or
  converted open_clip model), a training workdir (its latest checkpoint), or one checkpoint
  step directory of a workdir."""
  path = epath.Path(path)
  if (path / "model_config.json").exists():
    return params_dir.load(path)
  if (path / "checkpoints").exists():
    workdir, state_dir = path, latest_state_dir(path / "checkpoints")
  elif (path / "state").exists():
    workdir, state_dir = path.parent.parent, path / "state"
  else:
    raise FileNotFoundError(f"{path} is neither a params directory (model_config.json), a "
                            "training workdir (checkpoints/) nor a checkpoint step (state/)")
  config = json.loads((workdir / "config.json").read_text())
  with _without_missing_metadata_warning():
    metadata = ocp.StandardCheckpointer().metadata(state_dir)
  tree = getattr(metadata, "item_metadata", metadata)
  tree = getattr(tree, "tree", tree)
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), dict(tree)["params"])
  restored = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(
          item={"params": target},
          restore_args={"params": jax.tree.map(lambda _: ocp.RestoreArgs(
              restore_type=np.ndarray), target)},
          partial_restore=True))
  return restored["params"], from_dict(config["model"])
