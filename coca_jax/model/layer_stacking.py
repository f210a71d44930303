"""Converts params between unrolled layers (`name_0` ... `name_{n-1}`) and scanned layers
(`name`, each leaf with a leading layer axis), so that weights move between the two modes."""
import re
from typing import Any, Dict

import jax
import numpy as np

_UNROLLED = re.compile(r"^(.*)_(\d+)$")


def _stack_level(tree: Dict[str, Any], xp) -> Dict[str, Any]:
  groups, out = {}, {}
  for key, value in tree.items():
    m = _UNROLLED.match(key)
    if m and m.group(1) == "layers" and isinstance(value, dict):
      groups.setdefault(m.group(1), {})[int(m.group(2))] = value
    else:
      out[key] = _stack_level(value, xp) if isinstance(value, dict) else value
  for name, layers in groups.items():
    ordered = [layers[i] for i in range(len(layers))]
    out[name] = jax.tree.map(lambda *xs: xp.stack(xs), *ordered)
  return out


def _unstack_level(tree: Dict[str, Any], scanned: bool) -> Dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if key == "layers" and isinstance(value, dict):
      depth = jax.tree.leaves(value)[0].shape[0]
      for i in range(depth):
        out[f"{key}_{i}"] = jax.tree.map(lambda x, i=i: x[i], value)
    else:
      out[key] = _unstack_level(value, scanned) if isinstance(value, dict) else value
  return out


def stack_layers(params: Dict[str, Any], xp=np) -> Dict[str, Any]:
  """Unrolled params (`layers_0`, `layers_1`, ...) -> scanned params (`layers`)."""
  return _stack_level(dict(params), xp)


def unstack_layers(params: Dict[str, Any]) -> Dict[str, Any]:
  """Scanned params (`layers` with a leading axis) -> unrolled params (`layers_i`)."""
  return _unstack_level(dict(params), True)
