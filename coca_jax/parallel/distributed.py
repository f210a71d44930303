"""Multi-process start-up: `jax.distributed.initialize` when the config or the environment asks;
`barrier(name)` and `print0(message)` for code every process runs.

`config.distributed` fields:
  enabled                 "auto" | True | False. auto: initialize when a coordinator address is
                          given (config or JAX_COORDINATOR_ADDRESS), under SLURM with more than
                          one task, or on a multi-host TPU slice (jax detects both by itself)
  coordinator_address     "host:port" of process 0, for CPU/GPU clusters
  num_processes, process_id   for CPU/GPU clusters (None: detected)
  initialization_timeout_s    how long to wait for every process to join
  heartbeat_timeout_s     a process that stops answering for this long makes the others stop
                          with an error instead of hanging at a collective or a barrier
"""
import os

from absl import logging
import jax


def _cluster_detected() -> bool:
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts


def initialize(dist_config) -> None:
  """Calls `jax.distributed.initialize` when `dist_config` (`config.distributed`, fields in
  the module docstring) enables it, or when it is "auto" and a cluster is detected; nothing
  otherwise. Must run before the first JAX computation."""
  enabled = dist_config.enabled
  if enabled == "auto":
    enabled = bool(dist_config.coordinator_address) or _cluster_detected()
  if not enabled:
    return
  kwargs = {}
  if dist_config.coordinator_address:
    kwargs = dict(coordinator_address=dist_config.coordinator_address,
                  num_processes=dist_config.num_processes, process_id=dist_config.process_id)
  jax.distributed.initialize(
      initialization_timeout=int(dist_config.initialization_timeout_s),
      heartbeat_timeout_seconds=int(dist_config.heartbeat_timeout_s), **kwargs)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def barrier(name: str):
  """Waits until every process reaches the barrier of this name (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def print0(message: str):
  """Progress for people: process 0 only, flushed at once."""
  if jax.process_index() == 0:
    print(message, flush=True)
