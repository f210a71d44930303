"""Where arrays live: the device mesh, logical axis rules, and the processes of a run.

  sharding.py      the `(data, fsdp, tensor)` mesh, logical-name rules and their shardings,
                   global batches from per-process ones, arrays back to the host
  distributed.py   `jax.distributed` start-up from the config, process-0 printing, barriers
  platforms.py     how a command starts: its JAX platforms (no TPU probe without TPU chips),
                   TensorFlow off the GPUs, WARNING logs unless --verbosity
  host_memory.py   huge pages for XLA:CPU's per-step buffers (a restart with a glibc tunable)
"""
