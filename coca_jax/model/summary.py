"""Moved to `coca_jax.tools.summary`; `python -m coca_jax.model.summary` still runs it, for one release."""
import runpy

if __name__ == "__main__":
  runpy.run_module("coca_jax.tools.summary", run_name="__main__", alter_sys=True)
