"""Command-line tools about a config's model and program, not run during training.

  aot.py       ahead-of-time compilation of the train step for a TPU topology: memory per
               chip and XLA's FLOP count, without the chips (`python -m coca_jax.tools.aot`)
  flops.py     analytic FLOPs per example of a config (`python -m coca_jax.tools.flops`)
  summary.py   parameter counts per tower (`python -m coca_jax.tools.summary`)
"""
