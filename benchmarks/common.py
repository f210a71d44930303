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
