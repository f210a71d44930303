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


def train_command(workdir, *overrides, config=MICRO_TRAIN):
  return [sys.executable, str(ROOT / "train.py"), f"--config={config}",
          f"--workdir={workdir}", *overrides]


def subprocess_env(devices: int = 1, data_dir=None):
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  if data_dir:
    env["TFDS_DATA_DIR"] = str(data_dir)
  return env


def run_train(workdir, *overrides, devices=1, data_dir=None, timeout=300, config=MICRO_TRAIN):
  return subprocess.run(train_command(workdir, *overrides, config=config),
                        env=subprocess_env(devices, data_dir), capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT)


# A micro CoCa pretrained for a few hundred steps (about 30 s on 2 CPU cores), half captions,
# half class-name prompts as configs/tiny.py: enough for its embedding to carry the classes.
PRETRAIN_OVERRIDES = (
    "--config.num_train_steps=300", "--config.global_batch_size=64",
    "--config.log_every_steps=100", "--config.checkpoint.every_steps=300",
    "--config.loss.caption_weight=1.0", "--config.optimizer.warmup_steps=20",
    "--config.data.num_threads=2",
    "--config.data.train={'captions': {'name': 'coca_shapes', 'split': 'train', 'weight': 0.5}, "
    "'class_names': {'name': 'coca_shapes', 'split': 'train', 'label_key': 'label', "
    "'templates': 'coca_shapes', 'weight': 0.5}}")


def pretrain_micro(workdir):
  result = run_train(workdir, *PRETRAIN_OVERRIDES, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def random_micro_export(directory, seed: int = 3):
  """A randomly initialised model of the micro training config, saved params-only."""
  # pylint: disable=import-outside-toplevel
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from coca_jax.checkpoints import params_dir
  from coca_jax.model import create_model
  config = micro_config()
  model = create_model(config.model)
  size, length = config.model.vision.image_size, config.data.text_length
  params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)),
                               jnp.zeros((1, length), jnp.int32))["params"])
  params_dir.save(str(directory), params, config.model)
  return directory


def load_config(name: str):
  """configs/NAME.py's config."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def checkpoint_tree(workdir):
  """{"params": host arrays, "opt_state_paths": [str]} of a workdir's latest checkpoint."""
  # pylint: disable=import-outside-toplevel
  import jax
  import orbax.checkpoint as ocp
  from coca_jax import checkpoints
  # pylint: disable-next=protected-access
  state_dir = checkpoints.latest_state_dir(pathlib.Path(workdir) / "checkpoints")
  meta = ocp.StandardCheckpointer().metadata(state_dir)
  tree = getattr(meta, "item_metadata", meta)
  tree = dict(getattr(tree, "tree", tree))
  paths = [jax.tree_util.keystr(p)
           for p, _ in jax.tree_util.tree_flatten_with_path(tree["opt_state"])[0]]
  params, _ = checkpoints.load_params(workdir)
  return {"params": params, "opt_state_paths": paths}
