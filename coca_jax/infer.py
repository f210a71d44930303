"""Moved to `coca_jax.inference.batch`; `python -m coca_jax.infer` still runs it, for one release."""
import runpy

if __name__ == "__main__":
  runpy.run_module("coca_jax.inference.batch", run_name="__main__", alter_sys=True)
