"""A workdir's checkpoints are never silently thrown away: a resume with another config is
refused (every file left byte-identical), warned about, or free (the same batches and params as
the uninterrupted run); a workdir none of whose checkpoints restores is refused unless a new run
is asked for, which sets them aside; workdirs without a recorded config still resume."""
import hashlib
import re
import shutil

import jax
import numpy as np
import pytest

from coca_jax import checkpoints
from coca_jax.checkpoints import resume_rules
from coca_jax import train as train_lib
from train_fixtures import micro_config

STEPS, INTERRUPTED = 7, 4
LOSS = re.compile(r"step (\d+)/\d+ \| loss ([0-9.]+)")


def config_for_tests():
  config = micro_config()
  config.num_train_steps = STEPS
  config.checkpoint.async_save = False
  return config


def files(workdir):
  """{relative path: sha1} of every file under the workdir."""
  return {str(p.relative_to(workdir)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The uninterrupted run (its final params and per-step losses), and a copy of its workdir as
  it was after step 4 (the later checkpoints removed)."""
  root = tmp_path_factory.mktemp("resume")
  reference = root / "reference"
  capture = _Capture()
  with capture:
    train_lib.train_and_evaluate(config_for_tests(), reference)
  interrupted = root / "interrupted"
  shutil.copytree(reference, interrupted)
  for step_dir in (interrupted / "checkpoints").iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > INTERRUPTED:
      shutil.rmtree(step_dir)
  return {"params": checkpoints.load_params(reference)[0], "losses": capture.losses(),
          "interrupted": interrupted}


class _Capture:
  """Collects what train_and_evaluate prints (a module fixture cannot use capsys)."""

  def __enter__(self):
    import contextlib, io  # pylint: disable=g-import-not-at-top,multiple-imports
    self.buffer = io.StringIO()
    self._redirect = contextlib.redirect_stdout(self.buffer)
    self._redirect.__enter__()
    return self

  def __exit__(self, *exc):
    self._redirect.__exit__(*exc)

  def losses(self):
    return {int(s): float(v) for s, v in LOSS.findall(self.buffer.getvalue())}


def workdir_copy(runs, tmp_path):
  target = tmp_path / "workdir"
  shutil.copytree(runs["interrupted"], target)
  return target


REFUSED = {
    "batch size (the reported example)": (
        lambda c: c.update(global_batch_size=8, num_train_steps=50), ["global_batch_size: 16 -> 8"]),
    "seed": (lambda c: c.update(seed=1), ["seed: 0 -> 1"]),
    "data spec": (lambda c: c.data.update(train=dict(name="coca_shapes", split="validation")),
                  ["data.train.split: 'train' -> 'validation'"]),
    "data weights": (lambda c: c.data.update(train=dict(
        a=dict(name="coca_shapes", split="train", weight=0.5),
        b=dict(name="coca_shapes", split="train", weight=0.5))), ["data.train.a.weight", "data.train.b.weight"]),
    "model": (lambda c: c.model.vision.update(mlp_dim=128),
              ["model.vision.mlp_dim: 64 -> 128"]),
    "optimizer kind": (lambda c: c.optimizer.update(name="adafactor"),
                       ["optimizer.name: 'adamw' -> 'adafactor'"]),
    "freeze": (lambda c: c.update(freeze=("contrastive_only",)), ["freeze:"]),
    "two at once": (lambda c: c.update(seed=3, global_batch_size=32),
                    ["seed: 0 -> 3", "global_batch_size: 16 -> 32"]),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_changes_touch_nothing(runs, tmp_path, name):
  workdir = workdir_copy(runs, tmp_path)
  before = files(workdir)
  change, expected = REFUSED[name]
  config = config_for_tests()
  with config.unlocked():
    change(config)
  with pytest.raises(ValueError) as info:
    train_lib.train_and_evaluate(config, workdir)
  message = str(info.value)
  for text in expected:
    assert text in message, message
  assert "new_run" in message
  assert files(workdir) == before  # config.json, checkpoints, events: byte-identical


def resumed(runs, tmp_path, change=lambda c: None, workdir=None):
  workdir = workdir or workdir_copy(runs, tmp_path)
  config = config_for_tests()
  with config.unlocked():
    change(config)
  capture = _Capture()
  with capture:
    train_lib.train_and_evaluate(config, workdir)
  return workdir, capture


FREE = {
    "mesh": lambda c: c.mesh.update(data=4, fsdp=2),
    "readers": lambda c: c.data.update(num_threads=2, prefetch=5),
    "cadence": lambda c: c.update(log_every_steps=1, eval_every_steps=3,
                                  checkpoint=dict(every_steps=3, max_to_keep=9,
                                                  async_save=True, new_run=False)),
}


@pytest.mark.parametrize("name", sorted(FREE))
def test_free_changes_resume_as_the_uninterrupted_run(runs, tmp_path, name):
  workdir, capture = resumed(runs, tmp_path, FREE[name])
  assert f"resumed from {workdir}/checkpoints/{INTERRUPTED}" in capture.buffer.getvalue()
  assert "warning" not in capture.buffer.getvalue()
  losses = capture.losses()
  assert sorted(losses) == list(range(INTERRUPTED + 1, STEPS + 1))
  exact = name != "mesh"  # another mesh sums in another order
  for step, loss in losses.items():
    np.testing.assert_allclose(loss, runs["losses"][step], rtol=0 if exact else 1e-5)
  params, _ = checkpoints.load_params(workdir)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(runs["params"])):
    if exact:
      np.testing.assert_array_equal(a, b)
    else:
      np.testing.assert_allclose(a, b, atol=1e-5)


def test_warned_change_resumes_and_names_the_consequence(runs, tmp_path):
  workdir, capture = resumed(runs, tmp_path, lambda c: c.update(num_train_steps=STEPS + 1))
  out = capture.buffer.getvalue()
  assert "warning: resuming with a changed config: num_train_steps: 7 -> 8" in out
  assert "schedule" in out
  assert max(capture.losses()) == STEPS + 1
  assert f'"num_train_steps": {STEPS + 1}' in (workdir / resume_rules.RUN_CONFIG).read_text()


def test_checkpoints_without_a_recorded_config_still_restore(runs, tmp_path):
  workdir = workdir_copy(runs, tmp_path)
  (workdir / resume_rules.RUN_CONFIG).unlink()
  _, capture = resumed(runs, tmp_path, workdir=workdir)
  assert f"resumed from {workdir}/checkpoints/{INTERRUPTED}" in capture.buffer.getvalue()
  assert (workdir / resume_rules.RUN_CONFIG).exists()


def test_no_restorable_checkpoint_is_refused_unless_a_new_run_is_asked_for(runs, tmp_path):
  workdir = workdir_copy(runs, tmp_path)
  for p in (workdir / "checkpoints").rglob("*"):  # damage every checkpoint's arrays
    if p.is_file() and p.stat().st_size > 0 and "manifest" not in p.name and p.suffix != ".json":
      p.write_bytes(p.read_bytes()[:7])
  before = files(workdir / "checkpoints")
  with pytest.raises(ValueError, match=r"holds steps \[2, 4\], but none could be restored"):
    resumed(runs, tmp_path, workdir=workdir)
  assert files(workdir / "checkpoints") == before
  _, capture = resumed(runs, tmp_path, lambda c: c.checkpoint.update(new_run=True),
                       workdir=workdir)
  assert "resumed from" not in capture.buffer.getvalue()
  aside = files(workdir / "checkpoints.set_aside.1")
  assert {k: aside[k] for k in before} == before
  assert {"run_config.json", "config.json"} <= set(aside)


def test_every_top_level_field_has_a_rule():
  config = micro_config()
  for path in resume_rules._flatten(config.to_dict()):  # pylint: disable=protected-access
    assert resume_rules.decide(path)[1] != "a field without a resume rule", path
