"""Fitting loaded params to a model config of the same architecture.

Scanned <-> unrolled layer stacks (`layer_stacking`), image position tables resized between
square patch grids (fine-tuning at another resolution, as in ViT, Dosovitskiy et al. 2021,
section 3.2), and an error that names every param that still differs, with how to fit it.
"""
from typing import List

from flax import traverse_util
import jax
import numpy as np

from coca_jax.model import layer_stacking
from coca_jax.model.config import from_dict


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
  """A ViT position table resized to another square patch grid.

  Args:
    pos: (extra + g*g, D) float32 (a NumPy array): `extra` class-token rows (1 with
      `class_token`, else 0), then a g x g grid in row-major order.
    num_patches: n, the new grid's patch count (a square).
    class_token: whether the table starts with a class-token row, kept as it is.

  Returns:
    (extra + n, D) NumPy array, pos's dtype: the grid resized bilinearly
    (`jax.image.resize`), as ViT fine-tuning at another resolution (Dosovitskiy et al. 2021,
    section 3.2).

  Raises:
    ValueError: the old or the new grid is not square.
  """
  extra = 1 if class_token else 0
  head, grid = pos[:extra], pos[extra:]
  old, new = int(round(len(grid) ** 0.5)), int(round(num_patches ** 0.5))
  if old * old != len(grid) or new * new != num_patches:
    raise ValueError(f"position embeddings: cannot resize {len(grid)} to {num_patches} "
                     "positions (both must be square grids)")
  grid = grid.reshape(old, old, -1)
  resized = jax.image.resize(grid, (new, new, grid.shape[-1]), method="bilinear")
  return np.concatenate([head, np.asarray(resized).reshape(new * new, -1)], axis=0)
