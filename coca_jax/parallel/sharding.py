"""The device mesh and the rules that map logical axis names onto it.

Mesh axes: `slice` (data parallel across TPU slices, over the data-centre network), `data`
(pure data parallel), `fsdp` (data parallel with params sharded), `tensor` (model parallel
within a layer). Parameters shard their `embed` axis over fsdp and their
mlp / heads / vocab axes over tensor; activations shard the batch over (data, fsdp).
"""
import math
from typing import Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("slice", "data", "fsdp", "tensor")

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
    ("act_batch", ("slice", "data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_mlp", "tensor"),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_vocab", "tensor"),
)


def fsdp_widths(model_config) -> Tuple[int, ...]:
  """The sizes the params' `embed` axis takes, which the fsdp axis must divide (a param whose
  width it does not divide is left replicated)."""
  get = lambda x, k: x[k] if isinstance(x, dict) else getattr(x, k)
  return (get(get(model_config, "vision"), "width"), get(get(model_config, "text"), "width"),
          get(model_config, "embed_dim"))


def auto_fsdp(shape, devices, widths: Sequence[int]) -> dict:
  """`shape` (a dict with fsdp 0) with fsdp as large as divides the devices the other axes
  leave and every width, and as the devices' physical mesh allows (on a TPU pod each mesh axis
  must be built from whole torus axes: 128 or 256 of a 16x16x8 pod, never 1,024); a -1 axis
  takes the rest. Sharding over all 2,048 chips of the paper's pod would divide none of the
  CoCa widths (768, 1,024, 1,408) and so replicate every param."""
  fixed = int(np.prod([v for v in shape.values() if v not in (-1, 0)]))
  if len(devices) % fixed:
    raise ValueError(f"config.mesh {shape} does not divide the {len(devices)} devices")
  most = len(devices) // fixed
  for width in widths:
    most = math.gcd(most, int(width))
  for fsdp in sorted((d for d in range(1, most + 1) if most % d == 0), reverse=True):
    trial = dict(shape, fsdp=fsdp)
    if -1 not in trial.values() and fixed * fsdp != len(devices):
      continue
    try:
      mesh = make_mesh(trial, devices=devices)
    except NotImplementedError:  # not a product of whole physical axes
      continue
    return {a: int(n) for a, n in mesh.shape.items()}
  raise ValueError(f"config.mesh {shape}: no fsdp size fits {len(devices)} devices and the "
                   f"widths {tuple(widths)}")


def make_mesh(shape, axis_names: Sequence[str] = None, devices=None,
              fsdp_divides: Sequence[int] = ()) -> Mesh:
  """A mesh over the devices. `shape` is a dict {axis: size} (the config's `mesh`) or a
  sequence of sizes for `axis_names` (default: the last len(shape) of MESH_AXES); one -1 entry
  takes the devices left over; fsdp 0 means as large as divides `fsdp_divides` (the model's
  widths, see auto_fsdp). With slice > 1 the outer axis spans TPU slices."""
  devices = jax.devices() if devices is None else devices
  if hasattr(shape, "items"):
    shape = dict(shape)
    if shape.get("fsdp") == 0:
      if not fsdp_divides:
        raise ValueError("config.mesh.fsdp=0 (as large as fits) needs the model's widths")
      shape = auto_fsdp(shape, devices, fsdp_divides)
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
      raise ValueError(f"config.mesh: unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
    axis_names = MESH_AXES
    shape = [shape.get(a, 1) for a in MESH_AXES]
  axis_names = axis_names or MESH_AXES[len(MESH_AXES) - len(shape):]
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"config.mesh {dict(zip(axis_names, shape))} does not divide the "
                       f"{len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"config.mesh {dict(zip(axis_names, shape))} needs "
                     f"{int(np.prod(shape))} devices, {len(devices)} are available")
  if "slice" in axis_names and shape[axis_names.index("slice")] > 1:
    from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel
    per_slice = list(shape)
    per_slice[axis_names.index("slice")] = 1
    dcn = [1] * len(shape)
    dcn[axis_names.index("slice")] = shape[axis_names.index("slice")]
    grid = mesh_utils.create_hybrid_device_mesh(per_slice, dcn, devices)
    return Mesh(grid, tuple(axis_names),
                axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
  # Auto axes: XLA's partitioner propagates shardings from the logical constraints (GSPMD).
  return jax.make_mesh(tuple(shape), tuple(axis_names), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def config_mesh(config) -> Mesh:
  """The mesh a run's config asks for (`config.mesh`, over all devices), fsdp sized to its
  model's widths where `config.mesh.fsdp` is 0."""
  return make_mesh(config.mesh, fsdp_divides=fsdp_widths(config.model))


def config_rules(config) -> Tuple[Tuple[str, object], ...]:
  """`config.logical_rules` (default `DEFAULT_RULES`) as a tuple of (logical name, mesh axes)
  pairs, lists of axes turned into tuples (a JSON-loaded config holds lists)."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in config.get("logical_rules", DEFAULT_RULES))


def logical_shardings(abstract_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a tree of (boxed) abstract values carrying logical axis names."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
  """Shards the leading (batch) axis as `act_batch` says; other axes are replicated."""
  spec = nn.logical_to_mesh_axes(("act_batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, PartitionSpec(*spec))


def global_batch(local_batch, mesh: Mesh, rules=DEFAULT_RULES):
  """Process-local numpy arrays -> global jax arrays sharded over the batch axes."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim, rules), x),
      local_batch)


def to_host(x) -> np.ndarray:
  """A replicated (e.g. reduced) jax array as numpy, on any process.

  Args:
    x: a jax.Array whose every shard holds the whole value (e.g. a () float32 sum), or
      anything `np.asarray` takes.

  Returns:
    np.ndarray with x's shape and dtype (the first local shard's copy when x spans processes).
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)
