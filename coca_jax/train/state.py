"""The train state, and its layout on the mesh as checkpoints hold it.

In the step, `TrainState` holds the trainable params, their optimizer state, the step and the
non-finite counter; frozen params (`freeze.py`) travel beside it as a separate, non-donated
argument. A checkpoint holds one tree with every param merged back in:

  {"params": all params, "opt_state": trainable params' optimizer state, "step": () int32,
   "nonfinite": {"count": () int32, "first_step": () int32}}

`TrainState.checkpoint_tree` and `TrainState.from_checkpoint_tree` convert between the two, so
the keys on disk do not depend on the Python classes.
"""
import dataclasses
from typing import Any, Callable, Dict, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from coca_jax.parallel import sharding
from coca_jax.train import freeze


@flax.struct.dataclass
class NonFinite:
  """Steps whose loss or gradient was NaN or Inf (their update was not applied): `count` () int32
  and the first such step `first_step` () int32 (-1 while there is none). Counted on the device,
  so the host learns of them without a sync every step."""
  count: Any
  first_step: Any

  @classmethod
  def none(cls) -> "NonFinite":
    """No non-finite step yet."""
    return cls(jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))

  def record(self, step, finite) -> "NonFinite":
    """The counter after `step` (() int32), whose loss and gradient were `finite` (() bool)."""
    bad = jnp.logical_not(finite)
    return NonFinite(self.count + bad.astype(jnp.int32),
                     jnp.where(bad & (self.first_step < 0), step, self.first_step))


@flax.struct.dataclass
class TrainState:
  """What a train step updates: `params` (the trainable ones, nested dicts of float32 arrays),
  `opt_state` (optax state of those params), `step` (() int32, steps taken) and `nonfinite`."""
  params: Any
  opt_state: Any
  step: Any
  nonfinite: NonFinite

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
    """Step 0 with fresh optimizer statistics for `params`."""
    return cls(params, tx.init(params), jnp.zeros((), jnp.int32), NonFinite.none())

  def apply_gradients(self, grads, tx: optax.GradientTransformation, finite) -> "TrainState":
    """The state after one optimizer update with `grads` (shaped as params). When `finite`
    (() bool) is False the params and optimizer state stay as they were and the step is
    counted in `nonfinite`; the step number advances either way."""
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    return TrainState(keep(params, self.params), keep(opt_state, self.opt_state), self.step + 1,
                      self.nonfinite.record(self.step, finite))

  def checkpoint_tree(self, frozen=None) -> Dict[str, Any]:
    """The tree a checkpoint holds: every param (`frozen` merged back in) and the rest."""
    return {"params": freeze.merge(self.params, frozen or {}), "opt_state": self.opt_state,
            "step": self.step, "nonfinite": {"count": self.nonfinite.count,
                                             "first_step": self.nonfinite.first_step}}

  @classmethod
  def from_checkpoint_tree(cls, tree, prefixes: Sequence[str] = ()
                           ) -> Tuple["TrainState", Dict[str, Any]]:
    """(state, frozen params) from a checkpoint tree (arrays, shardings or abstract arrays
    alike); `prefixes` name the frozen params (ValueError if one names no param)."""
    trainable, frozen = freeze.split(tree["params"], prefixes)
    nonfinite = NonFinite(tree["nonfinite"]["count"], tree["nonfinite"]["first_step"])
    return cls(trainable, tree["opt_state"], tree["step"], nonfinite), frozen


def fit_names(tree, mesh, rules):
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


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """A run's train state as checkpoints hold it, laid out on the mesh.

  init(rng) -> a fresh checkpoint tree, sharded (call it under the mesh and logical rules);
  shardings / abstract: that tree's NamedShardings and ShapeDtypeStructs (with shardings);
  prefixes: the frozen params; tx: the optimizer of the trainable ones.
  """
  init: Callable[[Any], Dict[str, Any]]
  shardings: Dict[str, Any]
  abstract: Dict[str, Any]
  prefixes: Tuple[str, ...]
  tx: optax.GradientTransformation

  def split(self, tree) -> Tuple[TrainState, Dict[str, Any]]:
    """(TrainState, frozen) of a checkpoint tree of this layout (or of its shardings)."""
    return TrainState.from_checkpoint_tree(tree, self.prefixes)

  def from_params(self, params) -> Dict[str, Any]:
    """A checkpoint tree around `params` (host or device arrays, every param) at step 0, with
    fresh optimizer statistics for the trainable ones, laid out on the mesh."""
    params = jax.device_put(params, self.shardings["params"])
    prefixes, tx = self.prefixes, self.tx
    return jax.jit(lambda p: _fresh_tree(p, prefixes, tx), out_shardings=self.shardings)(params)


def _fresh_tree(params, prefixes, tx):
  trainable, frozen = freeze.split(params, prefixes)
  return TrainState.create(trainable, tx).checkpoint_tree(frozen)


def state_layout(init_params: Callable[[Any], Any], tx: optax.GradientTransformation,
                 prefixes: Sequence[str], mesh, rules) -> StateLayout:
  """The layout of the state whose params `init_params(rng)` makes (boxed with logical axis
  names, as `model.init` returns them) and whose optimizer `tx` updates all but the params
  under `prefixes`. Nothing is allocated (shapes only)."""
  prefixes = tuple(prefixes)
  init_boxed = lambda rng: _fresh_tree(init_params(rng), prefixes, tx)  # noqa: E731
  boxed = fit_names(jax.eval_shape(init_boxed, jax.random.key(0)), mesh, rules)
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  init = lambda rng: nn.unbox(fit_names(init_boxed(rng), mesh, rules))  # noqa: E731
  return StateLayout(init, shardings, abstract, prefixes, tx)
