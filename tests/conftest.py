"""Test session setup: CPU only, 8 simulated devices, a persistent compilation cache."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402  (the environment must be set first)

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                 os.path.expanduser("~/.cache/coca_jax/xla")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
