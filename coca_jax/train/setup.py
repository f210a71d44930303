"""What every run sets up before its first step, one way for pretraining, probes and
classification: the processes, the checked config and workdir, the metric writer, the mesh and
its logical axis rules (`start`); then the train state, restored from the workdir's latest
checkpoint or made fresh, with `config.init_from`'s params for a fresh run (`restore_or_init`).
"""
import contextlib
import dataclasses
from typing import Any, Callable, Dict, Optional

from absl import logging
from clu import metric_writers
from etils import epath
import flax.linen as nn
import jax
from jax.sharding import Mesh

from coca_jax import checkpoints
from coca_jax.checkpoints import resume_rules
from coca_jax.parallel import distributed, sharding
from coca_jax.train import config as config_lib
from coca_jax.train.state import StateLayout, TrainState


@dataclasses.dataclass(frozen=True)
class Run:
  """A started run: its resolved `config`, `workdir`, metric `writer` (TensorBoard and log;
  process 0 only writes), device `mesh` and logical axis `rules`."""
  config: Any
  workdir: epath.Path
  writer: Any
  mesh: Mesh
  rules: tuple

  @contextlib.contextmanager
  def scope(self):
    """Inside it, jitted functions and logical axis names use this run's mesh and rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def global_batch(self, local: Dict[str, Any]) -> Dict[str, Any]:
    """This process's batch (host arrays, leading axis B / processes) as one global batch of
    jax.Arrays sharded over the mesh's batch axes; shapes gain the processes' rows, dtypes
    stay."""
    return sharding.global_batch(local, self.mesh, self.rules)


def start(config, workdir, check: Callable[[Any], None]) -> Run:
  """Resolves the config (defaults for missing fields), starts the processes
  (`config.distributed`), refuses a config that `check` raises on or a workdir whose
  checkpoints this config may not resume (ValueError, before anything is written), creates the
  workdir and returns the run."""
  config = config_lib.resolve(config)
  distributed.initialize(config.distributed)
  check(config)
  workdir = epath.Path(workdir)
  resume_rules.check(config, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  writer = metric_writers.create_default_writer(str(workdir),
                                                just_logging=jax.process_index() > 0)
  mesh = sharding.config_mesh(config)
  rules = sharding.config_rules(config)
  logging.info("mesh %s over %d devices", dict(mesh.shape), mesh.devices.size)
  return Run(config, workdir, writer, mesh, rules)


@dataclasses.dataclass
class Start:
  """Where the loop starts: the checkpoint `manager`, the `state` (trainable params) and the
  `frozen` params beside it, the `step` reached and whether the run is `fresh` (step 0)."""
  manager: Any
  state: TrainState
  frozen: Dict[str, Any]
  step: int
  fresh: bool


def restore_or_init(run: Run, layout: StateLayout, train_iter,
                    init_from: Optional[Callable[[Any], Any]] = None) -> Start:
  """The workdir's latest readable checkpoint (with the data iterator's position), else a fresh
  state from `config.seed`; for a fresh run with `config.init_from`, `init_from(params)` (every
  param, host arrays) returns the params to start from, with fresh optimizer statistics.

  Writes run_config.json once the state is settled. Raises ValueError when the workdir holds
  checkpoints and none restores (the errors logged before say why); they are left as they are.
  """
  config = run.config
  manager = checkpoints.make_manager(run.workdir, config.checkpoint.max_to_keep,
                                     config.checkpoint.async_save)
  tree, step = checkpoints.restore_latest(manager, layout.abstract, train_iter)
  if tree is None and manager.all_steps():
    manager.close()
    raise ValueError(
        f"{run.workdir}/checkpoints holds steps {sorted(manager.all_steps())}, but none could "
        "be restored (the errors above say why). They are left as they are: pass "
        "--config.checkpoint.new_run=True to set them aside and start a new run here.")
  resume_rules.record(config, run.workdir)  # what the checkpoints from here on are written with
  fresh = tree is None
  if fresh:
    with run.scope():
      tree = jax.jit(layout.init, out_shardings=layout.shardings)(jax.random.key(config.seed))
    step = 0
    if config.init_from and init_from is not None:
      tree = layout.from_params(init_from(jax.tree.map(jax.device_get, tree["params"])))
  else:
    distributed.print0(f"resumed from {run.workdir}/checkpoints/{step}")
  state, frozen = layout.split(tree)
  return Start(manager, state, frozen, step, fresh)
