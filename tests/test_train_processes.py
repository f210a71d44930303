"""Training as separate processes: exact resume after SIGKILL, SIGTERM saves and exits, two
processes on localhost equal one (pretraining, and a linear probe whose feature cache each
process gathers whole), resume on another mesh, a dead process stops the others."""
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np

from coca_jax import checkpoints
from train_fixtures import ROOT, random_micro_export, run_train, subprocess_env, train_command

LOSS = re.compile(r"step (\d+)/\d+ \| loss ([0-9.]+)")
# A learning rate that does not depend on num_train_steps (warmup, then constant): runs of
# different lengths on the same devices then compile the same step, which the persistent
# compilation cache holds after the first.
CONSTANT_LR = "--config.optimizer.decay=constant"


def losses(stdout):
  return {int(s): float(v) for s, v in LOSS.findall(stdout)}


def _at_constant_lr(overrides, kwargs):
  """The micro config's runs (no other `config` given) at the constant learning rate."""
  return overrides if "config" in kwargs else (CONSTANT_LR, *overrides)


def train(workdir, *overrides, **kwargs):
  """train.py run to its end."""
  return run_train(workdir, *_at_constant_lr(overrides, kwargs), **kwargs)


def start(workdir, *overrides, devices=1, **kwargs):
  """train.py started in the background, its output piped."""
  return subprocess.Popen(train_command(workdir, *_at_constant_lr(overrides, kwargs), **kwargs),
                          env=subprocess_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def wait_for_line(proc, pattern, timeout=240):
  """Reads the child's output until a line matches; returns everything read so far."""
  seen, deadline = [], time.time() + timeout
  for line in proc.stdout:
    seen.append(line)
    if re.search(pattern, line):
      return "".join(seen)
    if time.time() > deadline:
      break
  proc.kill()
  raise AssertionError(f"{pattern!r} never appeared:\n" + "".join(seen[-40:]))


def final_params(workdir):
  params, _ = checkpoints.load_params(workdir)
  return params


def assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_exact_resume_after_sigkill(tmp_path):
  steps = ["--config.num_train_steps=8"]
  reference = train(tmp_path / "reference", *steps)
  assert reference.returncode == 0, reference.stderr[-3000:]

  proc = start(tmp_path / "killed", *steps)
  wait_for_line(proc, r"step 5/8")
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  resumed = train(tmp_path / "killed", *steps)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  match = re.search(r"resumed from .*/checkpoints/(\d+)", resumed.stdout)
  assert match, resumed.stdout
  assert 0 < int(match.group(1)) <= 5
  assert_bitwise_equal(final_params(tmp_path / "killed"), final_params(tmp_path / "reference"))
  # The resumed run's losses are the uninterrupted run's, step for step.
  after = {s: v for s, v in losses(resumed.stdout).items()}
  ref = losses(reference.stdout)
  assert after and all(ref[s] == v for s, v in after.items())


def test_sigterm_saves_and_exits(tmp_path):
  proc = start(tmp_path / "run", "--config.num_train_steps=100000")
  wait_for_line(proc, r"step 3/")
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  match = re.search(r"preempted at step (\d+): checkpoint saved", out)
  assert match, out[-3000:]
  assert (tmp_path / "run" / "checkpoints" / match.group(1) / "state").exists()


def test_two_processes_match_one_and_resume_on_another_mesh(tmp_path):
  steps = ["--config.num_train_steps=4"]
  # Two devices in all, as in test_a_dead_process_stops_the_others: the same program.
  single = train(tmp_path / "one", *steps, devices=2)
  assert single.returncode == 0, single.stderr[-3000:]

  port = free_port()
  procs = [start(tmp_path / "two", *steps,
                 f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                 "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                 devices=1) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  # Only process 0 prints progress; its losses are the single process's.
  assert losses(outs[1]) == {}
  two, one = losses(outs[0]), losses(single.stdout)
  assert sorted(two) == sorted(one) == [1, 2, 3, 4]
  for s in one:
    assert abs(two[s] - one[s]) <= 1e-4 * max(1.0, abs(one[s])), (s, two[s], one[s])
  for x, y in zip(jax.tree.leaves(final_params(tmp_path / "two")),
                  jax.tree.leaves(final_params(tmp_path / "one"))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)

  # One process with 8 devices, on a (data=2, fsdp=2, tensor=2) mesh, resumes from it.
  resumed = train(tmp_path / "two", "--config.num_train_steps=6", "--config.mesh.data=2",
                  "--config.mesh.fsdp=2", "--config.mesh.tensor=2", devices=8)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert re.search(r"resumed from .*/checkpoints/4", resumed.stdout), resumed.stdout
  assert sorted(losses(resumed.stdout)) == [5, 6]


def test_two_processes_cache_the_same_probe_features_as_one(tmp_path):
  probe = dict(config=ROOT / "configs" / "probe_linear.py")
  args = [f"--config.init_from={random_micro_export(tmp_path / 'encoder')}",
          "--config.num_train_steps=4", "--config.global_batch_size=16",
          "--config.log_every_steps=1", "--config.data.train.split=train[:90]",
          "--config.data.eval.split=validation[:32]", "--config.evals.batch_size=16",
          "--config.checkpoint.async_save=False"]
  single = train(tmp_path / "one", *args, devices=2, **probe)
  assert single.returncode == 0, single.stderr[-3000:]
  port = free_port()
  procs = [start(tmp_path / "two", *args,
                 f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                 "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                 devices=1, **probe) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  # 90 train images (6 batches of 16, the last padded): the same cache, in the split's order.
  cached = [np.load(tmp_path / run / "feature_cache" / "features.npy") for run in ("one", "two")]
  assert cached[0].shape == (90, 32)
  np.testing.assert_allclose(cached[1], cached[0], atol=1e-6)
  np.testing.assert_array_equal(np.load(tmp_path / "two" / "feature_cache" / "labels.npy"),
                                np.load(tmp_path / "one" / "feature_cache" / "labels.npy"))
  two, one = losses(outs[0]), losses(single.stdout)
  assert sorted(two) == sorted(one) == [1, 2, 3, 4]
  for s in one:
    assert abs(two[s] - one[s]) <= 1e-5, (s, two[s], one[s])


def test_a_dead_process_stops_the_others(tmp_path):
  port = free_port()
  common = ["--config.num_train_steps=100000",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            "--config.distributed.num_processes=2", "--config.distributed.heartbeat_timeout_s=10"]
  procs = [start(tmp_path / "run", *common, f"--config.distributed.process_id={i}", devices=1)
           for i in range(2)]
  wait_for_line(procs[0], r"step 2/")
  procs[1].kill()
  started = time.time()
  try:
    procs[0].communicate(timeout=120)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    raise AssertionError("the surviving process hung after its peer died")
  assert procs[0].returncode != 0
  assert time.time() - started < 120
