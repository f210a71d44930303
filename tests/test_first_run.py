"""A first run explains itself: what starts and about how long, before the dataset is generated
and before the step compiles; nothing the user cannot act on (libtpu's start-up errors on a
machine without TPU chips, Orbax's missing-metadata warning, TFDS's warning that a dataset not
yet generated has no dataset_info.json) is shown."""
import logging
import subprocess

from coca_jax import checkpoints
from coca_jax.parallel import platforms
from train_fixtures import ROOT, subprocess_env, train_command

NOISE = ("could not determine TPU accelerator type", "unexpected worker hostname",
         "Metadata file does not exist", "has no dataset_info.json")


def test_first_run_lines_come_before_the_first_step(tmp_path):
  env = subprocess_env(data_dir=tmp_path / "tfds")
  env.pop("JAX_PLATFORMS")  # as a user runs it: JAX probes every installed platform
  small = "{'name': 'coca_shapes/small', 'split': '%s'}"
  result = subprocess.run(
      train_command(tmp_path / "run", "--config.num_train_steps=2",
                    f"--config.data.train={small % 'train'}",
                    f"--config.data.eval={small % 'validation'}"),
      env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  generating = out.index("generating the embedded dataset coca_shapes/small")
  compiling = out.index("compiling the train step: about")
  assert generating < compiling < out.index("step 1/2")
  for noise in NOISE:
    assert noise not in out + result.stderr, noise
  # Params read back from the workdir, as init_from and eval.py do: no Orbax warning.
  logger = logging.getLogger("absl")
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger.addHandler(handler)
  try:
    checkpoints.load_params(tmp_path / "run")
  finally:
    logger.removeHandler(handler)
  assert not any("Metadata file" in r.getMessage() for r in records)


def test_platforms_without_tpu():
  assert platforms.platforms_without_tpu() in ("cpu", "cuda,cpu", "rocm,cpu")
