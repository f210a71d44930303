"""Test session setup: CPU only, 8 simulated devices, a persistent compilation cache (shared with
the commands the tests start); torch imported before TensorFlow; the embedded dataset
generated once, before any test, so that the workers of `pytest -n` (pytest-xdist) never
generate it at the same time."""
import fcntl
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Inherited by the commands the tests start (train.py, eval.py, ...): one persistent cache, and
# every program in it however short its compile (saves about 1.3 s per train.py start; this
# process sets its own threshold below).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/coca_jax/xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (the environment must be set first)

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
# Not the many single-operation programs that eager code compiles here.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

try:  # torch and torchvision first: imported after TensorFlow (clu, TFDS), their import crashes
  import torch  # noqa: F401,E402  here, and which test a worker runs first is not fixed
  import torchvision  # noqa: F401,E402
except ImportError:
  pass


def pytest_sessionstart(session):
  """Generates coca_shapes (both configs) in the default TFDS data dir, one process at a time."""
  del session
  from coca_jax.data import embedded  # pylint: disable=import-outside-toplevel
  data_dir = pathlib.Path(os.environ.get("TFDS_DATA_DIR",
                                         os.path.expanduser("~/tensorflow_datasets")))
  data_dir.mkdir(parents=True, exist_ok=True)
  with open(data_dir / ".coca_jax_tests.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    for config in ("default", "small"):
      embedded.prepare(None, config)  # TFDS's default data dir, as the tests' configs use
