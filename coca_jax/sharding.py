"""The device mesh and the rules that map logical axis names onto it.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with params sharded),
`tensor` (model parallel within a layer). Parameters shard their `embed` axis over fsdp and their
mlp / heads / vocab axes over tensor; activations shard the batch over (data, fsdp).
"""
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: Tuple[Tuple[str, object], ...] = (
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("proj", None),
    ("layers", None),
    ("norm", None),
    ("pos", None),
    ("queries", None),
    ("patch_h", None),
    ("patch_w", None),
    ("channels", None),
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_vocab", "tensor"),
)


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES,
              devices=None) -> Mesh:
  """A mesh of `shape` over the devices; one -1 entry takes the devices left over."""
  devices = jax.devices() if devices is None else devices
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, "
                     f"{len(devices)} are available")
  # Auto axes: XLA's partitioner propagates shardings from the logical constraints (GSPMD).
  return jax.make_mesh(tuple(shape), tuple(axis_names), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def logical_shardings(abstract_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a tree of (boxed) abstract values carrying logical axis names."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
  """Shards the leading (batch) axis as `act_batch` says; other axes are replicated."""
  spec = nn.logical_to_mesh_axes(("act_batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, PartitionSpec(*spec))
