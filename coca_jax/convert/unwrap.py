"""The weights inside a saved PyTorch checkpoint, as training scripts and wrappers leave them.

A model's state dict rarely arrives bare:
  * nesting: open_clip's training script saves `{"epoch", "name", "state_dict", "optimizer",
    ...}`; PyTorch Lightning `{"state_dict", "optimizer_states", "callbacks", ...}`; timm and
    others `{"model": ...}`, `{"state_dict_ema": ...}`, `{"ema": ...}`.
    `find_state_dict` descends to the weights: a mapping whose values are all tensors.
  * key prefixes: DDP / DataParallel add `module.`, `torch.compile` adds `_orig_mod.`,
    Lightning adds the attribute the model is kept under (`model.`), EMA wrappers add theirs;
    any of them, in any order and depth. `strip_prefixes` removes every leading component that
    all keys share and that is not one of the model's own top-level names;
    `torch.optim.swa_utils.AveragedModel`'s `n_averaged` counter is dropped first.
"""
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple

import numpy as np

# Entries that hold a model's own weights, preferred in this order; then averaged weights,
# used when no entry of the first kind exists (or when asked for by name).
WEIGHT_ENTRIES = ("state_dict", "model", "model_state_dict", "module", "net", "network")
EMA_ENTRIES = ("state_dict_ema", "model_ema", "ema", "ema_state_dict", "ema_model",
               "averaged_model")
# Bookkeeping tensors that wrappers add beside the weights.
WRAPPER_BUFFERS = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel


def _is_array(x) -> bool:
  return isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "dtype"))


def _is_state_dict(x) -> bool:
  return (isinstance(x, Mapping) and len(x) > 0 and all(isinstance(k, str) for k in x)
          and all(_is_array(v) for v in x.values()))


def _state_dicts(x, path: str = "") -> List[Tuple[str, Mapping]]:
  """(entry path "a/b", state dict) for every state dict nested in mappings under x."""
  if _is_state_dict(x):
    return [(path, x)]
  found = []
  if isinstance(x, Mapping):
    for key, value in x.items():
      if isinstance(key, str):
        found += _state_dicts(value, f"{path}/{key}" if path else key)
  return found


def find_state_dict(checkpoint: Any, entry: Optional[str] = None) -> Tuple[Dict[str, Any], str]:
  """The weights in a loaded checkpoint -> (name -> tensor, the entry path used; "" = top).

  Args:
    checkpoint: what `torch.load` or `safetensors` returned: a state dict, or mappings that
      hold one (see the module docstring).
    entry: "a/b" picks `checkpoint["a"]["b"]`; None picks the only state dict, else the first
      of WEIGHT_ENTRIES, then EMA_ENTRIES, found at any depth.
  Raises:
    ValueError: no state dict; `entry` missing or not a state dict; several state dicts and
      none by a known name (the message lists them).
  """
  if entry:
    x = checkpoint
    for key in entry.strip("/").split("/"):
      if not isinstance(x, Mapping) or key not in x:
        have = sorted(k for k in x if isinstance(k, str)) if isinstance(x, Mapping) else []
        raise ValueError(f"checkpoint has no entry {entry!r} (at {key!r}; entries there: "
                         f"{have})")
      x = x[key]
    if not _is_state_dict(x):
      raise ValueError(f"checkpoint entry {entry!r} is not a state dict (name -> tensor)")
    return dict(x), entry.strip("/")
  found = _state_dicts(checkpoint)
  if not found:
    top = sorted(k for k in checkpoint if isinstance(k, str)) if isinstance(
        checkpoint, Mapping) else type(checkpoint).__name__
    raise ValueError(f"no state dict (a mapping of names to tensors) in the checkpoint: {top}")
  if len(found) == 1:
    return dict(found[0][1]), found[0][0]
  for name in WEIGHT_ENTRIES + EMA_ENTRIES:
    for path, state_dict in found:
      if path.split("/")[-1] == name:
        return dict(state_dict), path
  raise ValueError(f"several state dicts in the checkpoint ({[p for p, _ in found]}); "
                   "choose one with entry='PATH'")


def shared_prefix(names: Collection[str]) -> str:
  """The leading dot-separated components that every name shares ("" if none)."""
  parts = [n.split(".")[:-1] for n in names]
  if not parts:
    return ""
  common = []
  for column in zip(*parts):
    if len(set(column)) != 1:
      break
    common.append(column[0])
  return "".join(c + "." for c in common)


def strip_prefixes(state_dict: Mapping[str, Any],
                   top_level: Collection[str]) -> Tuple[Dict[str, Any], List[str]]:
  """Removes wrapper prefixes -> (state dict, the prefixes removed, outermost first).

  Args:
    state_dict: name -> tensor.
    top_level: the model's own first name components (open_clip CoCa: visual, text,
      text_decoder, logit_scale); a shared component among them is never stripped.
  """
  out, removed = dict(state_dict), []
  while out:
    # A wrapper's own counters sit beside its prefixed weights; they go with the prefix.
    weights = {k: v for k, v in out.items() if k not in WRAPPER_BUFFERS or k in top_level}
    first = {k.split(".", 1)[0] if "." in k else None for k in weights}
    if len(first) != 1 or None in first or next(iter(first)) in top_level:
      break
    (component,) = first
    removed.append(component + ".")
    out = {k[len(component) + 1:]: v for k, v in weights.items()}
  return out, removed
