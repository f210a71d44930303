"""Compiles the training step ahead of time for a TPU topology, on a machine without a TPU.

With libtpu installed (`pip install -e ".[tpu]"`) and JAX_PLATFORMS=cpu, libtpu is only used
as a compiler: `jax.experimental.topologies` describes a TPU slice (its chips and their
interconnect), and the real train step (built by `coca_jax.train.program.step_program`, as
training builds it) is lowered with abstract, sharded inputs and compiled for it. Nothing is
allocated: the state comes from jax.eval_shape. Prints one JSON line: per-chip memory from XLA's memory analysis against the chip's HBM, whether it fits,
XLA's FLOP count against coca_jax.tools.flops, and the compile time.

  python -m coca_jax.tools.aot --config=configs/coca_2b.py --topology=v4:16x16x8 \
      --remat_policy=full --mesh=auto
  python -m coca_jax.tools.aot --config=configs/coca_base.py --topology=v5e:16x16 \
      --config.grad_accum_steps=4 --output=/tmp/aot.jsonl

`--mesh=auto` shards params over the largest fsdp axis that divides the model's widths and
that the chips' torus allows, the rest of the chips being a `data` axis;
`--mesh=data:16,fsdp:128` sets the axes; without `--mesh` the config's own mesh is used.
"""
import os

# Must precede the first jax import: libtpu then only compiles, it is never started as a
# backend (a CPU machine has no TPU to open).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu takes /tmp/libtpu_lockfile so that two processes never share a TPU; here it only
# compiles, so a second compile (or a test run) beside the first is safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import contextlib  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from typing import Any, Dict, Optional  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402

from coca_jax.tools import flops as flops_lib  # noqa: E402
from coca_jax.parallel import sharding  # noqa: E402
from coca_jax.train import config as train_config  # noqa: E402
from coca_jax.model import create_model  # noqa: E402

GIB = 2 ** 30

# Per TPU generation: the compiler's chip configuration and chips per host (as on Cloud TPU
# pods: one v4 / v5p device is a megacore of two TensorCores; v5e has one core per chip, four
# chips per host in a pod), HBM per chip, and the dense bfloat16 peak per chip.
CHIPS: Dict[str, Dict[str, Any]] = {
    "v4": dict(chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1), hbm_gib=32,
               peak_bf16_tflops=275),
    "v5p": dict(chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1), hbm_gib=95,
                peak_bf16_tflops=459),
    "v5e": dict(chip_config_name="default", chips_per_host_bounds=(2, 2, 1), hbm_gib=16,
                peak_bf16_tflops=197),
}


def chip_spec(topology: str) -> Dict[str, Any]:
  """The `CHIPS` entry of a topology's TPU generation ("v4:16x16x8" -> CHIPS["v4"]): compiler
  chip configuration, chips per host, HBM per chip (GiB) and bf16 peak (TFLOP/s per chip).
  Raises ValueError for a generation not in CHIPS."""
  generation = topology.split(":")[0]
  if generation not in CHIPS:
    raise ValueError(f"--topology={topology}: the generation must be one of {sorted(CHIPS)} "
                     "(e.g. v4:16x16x8, v5e:16x16, v5p:8x8x8)")
  return CHIPS[generation]


def libtpu_available() -> bool:
  """Whether the `libtpu` package (the TPU compiler) is installed; it is not imported."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str, num_slices: int = 1):
  """Compile-only TPU devices for e.g. "v4:16x16x8" (2,048 chips)."""
  spec = chip_spec(topology)
  if not libtpu_available():
    raise RuntimeError(f"compiling for TPU topology {topology} needs libtpu: "
                       "pip install -e \".[tpu]\"")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  return topologies.get_topology_desc(
      platform="tpu", topology_name=topology, chip_config_name=spec["chip_config_name"],
      chips_per_host_bounds=spec["chips_per_host_bounds"], num_slices=num_slices).devices


def auto_mesh(model_cfg, devices) -> Dict[str, int]:
  """data x fsdp: fsdp as large as divides every width the params shard over and as the chips'
  physical mesh allows (sharding.auto_fsdp), the rest of the chips data parallel."""
  return sharding.auto_fsdp(dict(slice=1, data=-1, fsdp=0, tensor=1), devices,
                            sharding.fsdp_widths(model_cfg))


def parse_mesh(text: str) -> Dict[str, int]:
  """"data:16,fsdp:128" -> {"slice": 1, "data": 16, "fsdp": 128, "tensor": 1}: the integer
  sizes of the mesh axes (slice, data, fsdp, tensor), 1 for axes not named. Raises ValueError
  for an unknown axis, a missing size or a size that is not an integer."""
  mesh = dict(slice=1, data=1, fsdp=1, tensor=1)
  for part in text.split(","):
    name, _, size = part.partition(":")
    if name.strip() not in mesh or not size:
      raise ValueError(f"--mesh={text}: expected axis:size pairs over {tuple(mesh)}")
    mesh[name.strip()] = int(size)
  return mesh


def lower_train_step(config, devices, mesh_shape: Optional[Dict[str, int]] = None):
  """Lowers the config's train step for `devices` (compile-only TPU devices or real ones),
  with abstract inputs only: the program training runs, built by the same
  `coca_jax.train.program.step_program` (freeze, distillation, caption weights and
  `init_from` models included). Returns (lowered, info)."""
  from coca_jax.train import program as program_lib  # pylint: disable=import-outside-toplevel
  config = train_config.resolve(config)
  model = create_model(config.model, deterministic=config.model.get("dropout_rate", 0) == 0)
  mesh_shape = dict(mesh_shape or config.mesh)
  mesh = sharding.make_mesh(mesh_shape, devices=devices,
                            fsdp_divides=sharding.fsdp_widths(model.cfg))
  rules = sharding.config_rules(config)
  batch, accum = config.global_batch_size, config.grad_accum_steps
  data_parallel = math.prod(mesh.shape[a] for a in ("slice", "data", "fsdp"))
  if batch % accum or (batch // accum) % data_parallel:
    raise ValueError(f"global_batch_size {batch} in {accum} micro-batches does not split "
                     f"over the {data_parallel} data-parallel chips of mesh {dict(mesh.shape)}")
  program = program_lib.step_program(config, model, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    lowered = program.lower()
  abstract_state = program.layout.abstract  # as checkpoints hold it: frozen params included
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state["params"]))
  state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize
                    for x in jax.tree.leaves(abstract_state))
  # One chip's shard of the state, before TPU layout padding.
  shard_bytes = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                    for x in jax.tree.leaves(abstract_state))
  info = {"mesh": {k: int(v) for k, v in mesh.shape.items()}, "params": n_params,
          "state_gib_total": round(state_bytes / GIB, 3),
          "state_bytes_per_chip": int(shard_bytes)}
  return lowered, info


def analyse(compiled, *, hbm_bytes: Optional[int] = None) -> Dict[str, Any]:
  """Per-device memory (arguments + outputs + temporaries - aliased) and XLA's FLOP count."""
  out: Dict[str, Any] = {}
  memory = compiled.memory_analysis()
  if memory is not None:
    total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
             + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    out.update(argument_bytes=int(memory.argument_size_in_bytes),
               output_bytes=int(memory.output_size_in_bytes),
               temp_bytes=int(memory.temp_size_in_bytes),
               alias_bytes=int(memory.alias_size_in_bytes),
               generated_code_bytes=int(memory.generated_code_size_in_bytes),
               bytes_per_chip=int(total), gib_per_chip=round(total / GIB, 3))
    if hbm_bytes:
      out.update(hbm_gib=round(hbm_bytes / GIB, 1), hbm_fraction=round(total / hbm_bytes, 3),
                 fits=bool(total <= hbm_bytes))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  if cost:
    out["xla_flops_per_chip"] = float(cost.get("flops", float("nan")))
  return out


_UNITS = {"B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def out_of_memory(message: str, state_bytes_per_chip: int) -> Dict[str, Any]:
  """What the compiler's out-of-memory error says: the temporaries it needed and the HBM it
  had (e.g. "... HLO temporaries (51.60G) exceeds available HBM (30.75G)")."""
  out: Dict[str, Any] = {"out_of_memory": message.strip().splitlines()[0][:400]}
  found = re.search(r"temporaries \(([\d.]+)([BKMGT])\) exceeds available HBM "
                    r"\(([\d.]+)([BKMGT])\)", message)
  if found:
    temp = float(found.group(1)) * _UNITS[found.group(2)]
    available = float(found.group(3)) * _UNITS[found.group(4)]
    # The state shard is there too (donated: it counts once).
    at_least = temp + state_bytes_per_chip
    out.update(temp_bytes_required=int(temp), hbm_available_bytes=int(available),
               bytes_per_chip_at_least=int(at_least), gib_per_chip_at_least=round(
                   at_least / GIB, 3))
  return out


@contextlib.contextmanager
def outside_persistent_cache():
  """Compiles run inside it write nothing to JAX's persistent compilation cache.

  An executable compiled for compile-only TPU devices cannot be loaded without a TPU client: a
  later run that finds it in the cache warns and compiles again. JAX decides once per process
  whether the cache is used, so turning the cache off here would not stop the write; a
  minimum compile time that no compile reaches does (it is checked at every write)."""
  option = "jax_persistent_cache_min_compile_time_secs"
  was = getattr(jax.config, option)
  jax.config.update(option, float("inf"))
  try:
    yield
  finally:
    jax.config.update(option, was)


def compile_for_topology(config, topology: str, *, mesh: Optional[str] = None,
                         num_slices: int = 1) -> Dict[str, Any]:
  """Compiles the config's train step for a TPU topology; returns the JSON-able result."""
  spec = chip_spec(topology)
  devices = topology_devices(topology, num_slices)
  config = train_config.resolve(config)
  model_cfg = create_model(config.model).cfg
  if mesh == "auto":
    mesh_shape = auto_mesh(model_cfg, devices)
  elif mesh:
    mesh_shape = parse_mesh(mesh)
  else:
    mesh_shape = dict(config.mesh)
  t0 = time.perf_counter()
  lowered, info = lower_train_step(config, devices, mesh_shape)
  lower_s = time.perf_counter() - t0
  compiled, oom = None, None
  t0 = time.perf_counter()
  try:
    with outside_persistent_cache():
      compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # The TPU compiler refuses a program that does not fit its chip: a result too.
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    oom = str(e)
  compile_s = time.perf_counter() - t0
  result = {"topology": topology, "num_slices": num_slices, "chips": len(devices),
            "device_kind": devices[0].device_kind, **info,
            "global_batch_size": config.global_batch_size,
            "grad_accum_steps": config.grad_accum_steps,
            "remat_policy": model_cfg.remat_policy, "dtype": model_cfg.dtype,
            "scan_layers": model_cfg.scan_layers, "optimizer": config.optimizer.name}
  if compiled is not None:
    result.update(analyse(compiled, hbm_bytes=spec["hbm_gib"] * GIB))
  else:
    result.update(out_of_memory(oom, info["state_bytes_per_chip"]),
                  hbm_gib=spec["hbm_gib"], fits=False)
  model_flops = (flops_lib.forward_flops(model_cfg, config.data.text_length)["train"]
                 * config.global_batch_size / len(devices))
  result["model_flops_per_chip"] = model_flops
  if result.get("xla_flops_per_chip"):
    result["xla_over_model_flops"] = round(result["xla_flops_per_chip"] / model_flops, 3)
  # The step time if the chip ran at its bf16 peak on the model's FLOPs (an MFU of 100%).
  result["step_s_at_peak"] = round(model_flops / (spec["peak_bf16_tflops"] * 1e12), 3)
  result.update(lower_s=round(lower_s, 1), compile_s=round(compile_s, 1),
                jax=jax.__version__, date=datetime.date.today().isoformat())
  return result


def main(argv):
  """Compiles `--config`'s train step for `--topology` and prints the result of
  `compile_for_topology` (with the config file name) as one JSON line, also appended to
  `--output` when given."""
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  config = f.config
  if f.remat_policy:  # the paper configs leave it at the model's default ("none")
    with config.unlocked():
      config.model.remat_policy = f.remat_policy
  result = {"config": config_flags.get_config_filename(f["config"])}
  result.update(compile_for_topology(config, f.topology, mesh=f.mesh,
                                     num_slices=f.num_slices))
  line = json.dumps(result)
  if f.output:
    with open(f.output, "a") as out:
      out.write(line + "\n")
  print(line, flush=True)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
  flags.DEFINE_string("topology", None, "TPU topology, e.g. v4:16x16x8, v5e:16x16, v5p:8x8x8.")
  flags.DEFINE_string("mesh", None, "'auto', or axis sizes like data:16,fsdp:128 "
                      "(default: the config's mesh).")
  flags.DEFINE_integer("num_slices", 1, "TPU slices (a slice axis over the data-centre "
                       "network).")
  flags.DEFINE_enum("remat_policy", None, ["none", "full", "dots", "dots_no_batch"],
                    "Sets config.model.remat_policy.")
  flags.DEFINE_string("output", None, "Also append the JSON line to this file.")
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main)
