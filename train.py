"""Trains CoCa: `python train.py --config=configs/tiny.py --workdir=DIR [--config.FIELD=VALUE]`.

Run the same command again to resume from DIR's latest checkpoint; on a pod, run it on every
host.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from coca_jax.parallel.platforms import start_command  # noqa: E402
  start_command()  # progress lines only (--verbosity=0 for logs); no TPU probe without TPUs
  from coca_jax.train import train_and_evaluate  # noqa: E402
  train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
