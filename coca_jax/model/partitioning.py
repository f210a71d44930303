"""Logical axis names for parameters and activations.

Parameter axes: embed, mlp, heads, kv, vocab, layers (scan), and unsharded ones (norm, pos,
queries, patch_h, patch_w, channels). Activation axes carry an `act_` prefix so that they never
map onto the same mesh axis as a parameter by accident. `coca_jax.parallel.sharding` maps both
onto the mesh.
"""
import flax.linen as nn


def param_init(init, names):
  """An initializer whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, names)


def constrain(x, names):
  """Names an activation's axes; a no-op outside a mesh with logical rules.

  x: an array of any shape and dtype, e.g. (B, L, W) float32 with names
  ("act_batch", "act_len", "act_embed"), one name (or None) per axis; returns x, same shape
  and dtype, with a sharding constraint.
  """
  return nn.with_logical_constraint(x, names)
