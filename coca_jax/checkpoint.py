"""Checkpoints: Orbax CheckpointManager for full resume (train state + data iterator state),
fallback to an older checkpoint when the latest is unreadable, and params-only loading.

Layout of a workdir:
  WORKDIR/config.json                  the resolved config
  WORKDIR/checkpoints/<step>/state     params, optimizer state, step, non-finite counters
  WORKDIR/checkpoints/<step>/data      each process's data iterator position (JSON)
A params-only directory (coca_jax.params_checkpoint) holds params/ and model_config.json.
Loading params needs neither TensorFlow nor Grain (they are imported only to save or restore a
training run's data iterator).
"""
import contextlib
import json
import logging as py_logging
from typing import Any, List, Optional, Tuple

from absl import logging
from etils import epath
from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from coca_jax import params_checkpoint
from coca_jax.model import layer_stacking
from coca_jax.model.config import from_dict


def make_manager(workdir, max_to_keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(epath.Path(workdir) / "checkpoints", options=options,
                               item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state, data_iter, force=False) -> bool:
  """Saves asynchronously; the state's arrays must be finite (the caller checks)."""
  from coca_jax.data.checkpoint import IteratorSave  # pylint: disable=g-import-not-at-top
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    data=IteratorSave(data_iter)),
                      force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state, data_iter
                   ) -> Tuple[Optional[Any], Optional[int]]:
  """Restores the newest readable checkpoint onto `abstract_state`'s shardings.

  An unreadable checkpoint (truncated file, missing piece) is reported and the previous one is
  tried. Returns (state, step), or (None, None) when there is nothing to resume.
  """
  from coca_jax.data.checkpoint import IteratorRestore  # pylint: disable=g-import-not-at-top
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=IteratorRestore(data_iter)))
    except Exception as e:  # pylint: disable=broad-except
      logging.error("checkpoint at step %d is unreadable (%s: %s); falling back to the "
                    "previous one", step, type(e).__name__, str(e)[:500])
      continue
    return restored["state"], step
  return None, None


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


def _latest_state_dir(checkpoints: epath.Path) -> epath.Path:
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
    return params_checkpoint.load(path)
  if (path / "checkpoints").exists():
    workdir, state_dir = path, _latest_state_dir(path / "checkpoints")
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


def adapt_params(params, source_config, target_config):
  """Fits loaded params to another config of the same architecture: scanned <-> unrolled
  layers, and the image position embeddings resized by 2-D interpolation when the image size
  or patch grid differs (fine-tuning at another resolution)."""
  src, tgt = from_dict(source_config), from_dict(target_config)
  params = layer_stacking.unstack_layers(params) if src.scan_layers else dict(params)
  if (src.vision.num_patches != tgt.vision.num_patches):
    params = dict(params)
    visual = dict(params["visual"])
    visual["pos_embedding"] = resize_position_embedding(
        np.asarray(visual["pos_embedding"]), tgt.vision.num_patches, tgt.vision.class_token)
    params["visual"] = visual
  return layer_stacking.stack_layers(params) if tgt.scan_layers else params


# Position tables: how to make a checkpoint's fit when their lengths differ.
_POSITION_HINTS = {
    "text/pos_embedding": "the text position table has context_length + 1 rows (CLS last): set "
                          "config.model.text.context_length and config.data.text_length to the "
                          "checkpoint's (rows - 1); it is not resized automatically",
    "visual/pos_embedding": "image position tables are resized automatically between square "
                            "patch grids: choose vision.image_size / patch_size giving a square "
                            "grid, and the same class_token setting as the checkpoint",
}


def param_differences(loaded, expected) -> List[str]:
  """Lines naming each param path that is missing, unexpected or shaped differently:
  "text/pos_embedding (25, 64) vs (33, 64)" (the loaded shape first)."""
  shape = lambda x: tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)  # noqa
  got = {k: shape(v) for k, v in traverse_util.flatten_dict(dict(loaded), sep="/").items()}
  want = {k: shape(v) for k, v in traverse_util.flatten_dict(dict(expected), sep="/").items()}
  lines = []
  for path in sorted(set(got) | set(want)):
    if path not in got:
      lines.append(f"{path}: missing from the checkpoint (model wants {want[path]})")
    elif path not in want:
      lines.append(f"{path}: in the checkpoint {got[path]}, not in this model")
    elif got[path] != want[path]:
      lines.append(f"{path} {got[path]} vs {want[path]} (checkpoint vs model)")
  return lines


def check_params_fit(loaded, expected, source: str):
  """Raises ValueError naming every param that differs between `loaded` (arrays) and
  `expected` (arrays or ShapeDtypeStructs), with how position tables can be made to fit."""
  lines = param_differences(loaded, expected)
  if not lines:
    return
  hints = [f"{name}: {hint}" for name, hint in _POSITION_HINTS.items()
           if any(line.split(" ")[0].rstrip(":").endswith(name) for line in lines)]
  raise ValueError(f"{source}: its params do not fit this model config ({len(lines)} "
                   "difference(s)):\n  " + "\n  ".join(lines[:40])
                   + (f"\n  ... and {len(lines) - 40} more" if len(lines) > 40 else "")
                   + "".join(f"\nHow to fit {h}" for h in hints))


def resize_position_embedding(pos, num_patches: int, class_token: bool):
  """(extra + g*g, D) -> (extra + n, D), the grid part resized bilinearly (n a square)."""
  extra = 1 if class_token else 0
  head, grid = pos[:extra], pos[extra:]
  old, new = int(round(len(grid) ** 0.5)), int(round(num_patches ** 0.5))
  if old * old != len(grid) or new * new != num_patches:
    raise ValueError(f"position embeddings: cannot resize {len(grid)} to {num_patches} "
                     "positions (both must be square grids)")
  grid = grid.reshape(old, old, -1)
  resized = jax.image.resize(grid, (new, new, grid.shape[-1]), method="bilinear")
  return np.concatenate([head, np.asarray(resized).reshape(new * new, -1)], axis=0)
