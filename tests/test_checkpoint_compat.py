"""Checkpoints written before the package moved into folders (`tests/fixtures/workdir_v1`: the
micro config trained 2 steps on one device by the flat layout) still restore and resume: the
train state's keys on disk are unchanged, and the third step's loss is the one the old layout
printed when it resumed the same checkpoint."""
import shutil

import jax
import numpy as np

from coca_jax import checkpoints
from train_fixtures import ROOT, micro_config, run_train

FIXTURE = ROOT / "tests" / "fixtures" / "workdir_v1"
# Printed by the flat layout (commit bb67e3f) resuming FIXTURE to 3 steps on one device.
OLD_STEP_3 = "step 3/3 | loss 17.4196 (con 2.8305, cap 7.2946)"


def test_old_checkpoint_params_load():
  params, model_config = checkpoints.load_params(FIXTURE)
  assert model_config.text.width == micro_config().model.text.width
  leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
  assert leaves and all(np.all(np.isfinite(x)) for x in leaves)


def test_old_checkpoint_resumes_to_the_same_loss(tmp_path):
  workdir = tmp_path / "workdir"
  shutil.copytree(FIXTURE, workdir)
  result = run_train(workdir, "--config.num_train_steps=3",
                     "--config.checkpoint.async_save=False")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resumed from {workdir}/checkpoints/2" in result.stdout
  assert OLD_STEP_3 in result.stdout, result.stdout[-2000:]
