"""Logical axis names for parameters and activations.

Parameter axes: embed, mlp, heads, kv, vocab, layers (scan), and unsharded ones (norm, pos,
queries, patch_h, patch_w, channels). Activation axes carry an `act_` prefix so that they never map onto
the same mesh axis as a parameter by accident. `coca_jax.sharding` maps both onto the mesh.
"""
import flax.linen as nn


def param_init(init, names):
  """An initializer whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, names)


def constrain(x, names):
  """Names an activation's axes; a no-op outside a mesh with logical rules."""
  return nn.with_logical_constraint(x, names)
