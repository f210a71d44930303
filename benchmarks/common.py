"""Shared by the benchmark scripts: config loading that works on a bare accelerator host, the
fields every JSON line carries, synthetic batches and timing.

Config files build on `coca_jax.train.config.base_config()`, which needs ml_collections and
imports the data pipeline (tensorflow-datasets, grain). A host without them (a GPU machine that
only has jax) still runs the benchmarks: the config file then runs against a stand-in
`base_config()` that accepts any field, and only `config.model` (a plain dict) is used.
"""
import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time
import types

import numpy as np

# Modules the full config loader needs; if any is missing the stand-in is used.
_CONFIG_DEPENDENCIES = ("ml_collections", "tensorflow_datasets", "grain")


class _Fields(dict):
  """A dict with attribute access whose missing fields spring into existence (nested)."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return self.setdefault(name, _Fields())

  def __setattr__(self, name, value):
    self[name] = value

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, _Fields) else v for k, v in self.items()}


def _full_loader_available() -> bool:
  for name in _CONFIG_DEPENDENCIES:
    try:
      if importlib.util.find_spec(name) is None:
        return False
    except (ImportError, ValueError):
      return False
  return True


def _exec_config(path):
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path, arg=None):
  """(config, loader name); config.model is the model config (a dict or a ConfigDict)."""
  if _full_loader_available() and not os.environ.get("COCA_BENCH_LIGHT_CONFIG"):
    module = _exec_config(path)
    loader = "ml_collections"
  else:
    stand_in = types.ModuleType("coca_jax.train.config")
    stand_in.base_config = _Fields
    saved = sys.modules.get("coca_jax.train.config")
    sys.modules["coca_jax.train.config"] = stand_in
    sys.modules.pop("coca_jax.train.paper_recipe", None)  # re-import it against the stand-in
    try:
      module = _exec_config(path)
    finally:
      sys.modules.pop("coca_jax.train.paper_recipe", None)
      if saved is None:
        sys.modules.pop("coca_jax.train.config", None)
      else:
        sys.modules["coca_jax.train.config"] = saved
    loader = "stand-in (no ml_collections)"
  config = module.get_config(arg) if arg is not None else module.get_config()
  return config, loader


def model_dict(config):
  model = config.model
  return model.to_dict() if hasattr(model, "to_dict") else dict(model)


def versions():
  import jax  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version(), "jax": jax.__version__}
  for name in ("jaxlib", "flax", "optax", "numpy", "torch", "open_clip"):
    module = sys.modules.get(name)
    if module is not None:
      out[name] = getattr(module, "__version__", "?")
  return out


# Vector extensions that decide CPU matmul speed, as /proc/cpuinfo names them.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info(cpuinfo_path="/proc/cpuinfo"):
  """{"cpu_model", "cpu_vector_extensions"} of this host (Linux's /proc/cpuinfo; elsewhere the
  platform's processor string and no extensions), and "xla_cpu_max_isa" when XLA_FLAGS caps
  the instruction set XLA may use (e.g. --xla_cpu_max_isa=AVX2): a figure holds for the
  extensions the compiled code could use."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
          model = value.strip()
        elif key.strip() == "flags":
          flags = set(value.split())
        if model and flags and key.strip() == "flags":
          break
  except OSError:
    pass
  info = {"cpu_model": model,
          "cpu_vector_extensions": [f for f in VECTOR_FLAGS if f in flags]}
  for flag in os.environ.get("XLA_FLAGS", "").split():
    if flag.startswith("--xla_cpu_max_isa="):
      info["xla_cpu_max_isa"] = flag.partition("=")[2]
  return info


def header(**fields):
  """The fields every JSON line carries: devices, the host CPU's model and vector extensions
  (a CPU figure holds for its machine), versions, date, machine load."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {
      **fields,
      "backend": jax.default_backend(),
      "device_kind": devices[0].device_kind,
      "device_count": len(devices),
      "host_cpus": os.cpu_count(),
      **cpu_info(),
      "load_avg_1m": round(os.getloadavg()[0], 2),
      "versions": versions(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def synthetic_text(rng, batch, length, vocab_size, eos_id, pad_id, sot_id=None):
  """Random token ids, an end token at a random position in the second half, padding after;
  the start token first when given."""
  text = rng.integers(4, vocab_size - 2, size=(batch, length)).astype(np.int32)
  text[text == pad_id] = pad_id + 1
  if sot_id is not None:
    text[:, 0] = sot_id
  for i, end in enumerate(rng.integers(length // 2, length, size=batch)):
    text[i, end] = eos_id if eos_id is not None else 1
    text[i, end + 1:] = pad_id
  return text


def synthetic_batch(cfg, batch, seed=0):
  """(images NHWC float32, text int32) as numpy arrays for a ModelConfig."""
  rng = np.random.default_rng(seed)
  size = cfg.vision.image_size
  images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
  sot = 49406 if cfg.text.vocab_size == 49408 else None
  text = synthetic_text(rng, batch, cfg.text.context_length, cfg.text.vocab_size,
                        cfg.text.eos_id, cfg.text.pad_id, sot)
  return images, text


def median_seconds(fn, runs):
  """Median wall time of `runs` calls of fn (which must block until its work is done)."""
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def alternating_seconds(steps, timed, block=2, rewarm=1, after_turn=None):
  """Wall times of `timed` calls of each step in `steps` ({side: fn}, each fn blocking until
  its work is done), the sides taking turns so that both see the same machine load.

  A turn is `rewarm` untimed calls of one side, then up to `block` timed ones; the order of the
  sides flips every round. The untimed calls are there because a machine may take back memory
  a process left free for a few seconds: XLA:CPU frees its temporary buffer (about 1 GB for
  configs/bench_small.py) at the end of every call, and on a VM with Linux free page reporting
  (virtio-balloon) the guest hands those pages to the host while the other side runs, so the
  next call faults them in again through the host (0.7-1.6 s more on a 4 s bench-small step
  after a 5 s pause, benchmarks/results/README.md). A training loop, whose steps follow each
  other, never pays that. `rewarm=0, block=1` is strict step-by-step alternation.

  Returns {side: [seconds, ...]} with `timed` entries each. `after_turn()` is called after
  every round (e.g. to sample the load). Raises ValueError for timed or block below 1 or a
  negative rewarm.
  """
  if timed < 1 or block < 1 or rewarm < 0:
    raise ValueError(f"need timed >= 1, block >= 1, rewarm >= 0; got {timed}, {block}, {rewarm}")
  times = {side: [] for side in steps}
  order = list(steps)
  while any(len(ts) < timed for ts in times.values()):
    for side in order:
      if len(times[side]) >= timed:
        continue
      for _ in range(rewarm):
        steps[side]()
      for _ in range(min(block, timed - len(times[side]))):
        t0 = time.perf_counter()
        steps[side]()
        times[side].append(time.perf_counter() - t0)
    if after_turn is not None:
      after_turn()
    order.reverse()
  return times
