"""Moved to `coca_jax.tools.aot`; `python -m coca_jax.aot` still runs it, for one release."""
import runpy

if __name__ == "__main__":
  runpy.run_module("coca_jax.tools.aot", run_name="__main__", alter_sys=True)
