"""Shared pieces of the training tests: the micro training config and a subprocess runner."""
import importlib.util
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MICRO_TRAIN = ROOT / "tests" / "configs" / "micro_train.py"


def micro_config():
  spec = importlib.util.spec_from_file_location("micro_train", MICRO_TRAIN)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def train_command(workdir, *overrides):
  return [sys.executable, str(ROOT / "train.py"), f"--config={MICRO_TRAIN}",
          f"--workdir={workdir}", *overrides]


def subprocess_env(devices: int = 1, data_dir=None):
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  if data_dir:
    env["TFDS_DATA_DIR"] = str(data_dir)
  return env


def run_train(workdir, *overrides, devices=1, data_dir=None, timeout=300):
  return subprocess.run(train_command(workdir, *overrides), env=subprocess_env(devices, data_dir),
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
