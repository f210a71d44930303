"""Training: pretraining CoCa, and probes and fine-tuning of image classifiers on its encoder.

  config.py         `base_config()` and `resolve()`: every field a run reads, with defaults
  config_checks.py  refuses configs that cannot work, naming the field
  state.py          the `TrainState` and its layout on the mesh; restore or init
  setup.py          what every run sets up first: processes, workdir, writer, mesh and rules
  step.py           the jitted CoCa train step (loss, gradient accumulation, update)
  program.py        the step's compiled program, built one way for training and `tools.aot`
  losses.py         contrastive, captioning and distillation losses
  optim.py          optimizers and learning-rate schedules
  freeze.py         param groups kept out of the optimizer
  loop.py           the step loop: logging, checkpoints, periodic evaluation, preemption
  pretrain.py       `train_and_evaluate` for CoCa pretraining, top to bottom
  classify.py       `train_and_evaluate` for probes and classification fine-tuning
  feature_cache.py  a probe's fixed features, computed once per workdir
  paper_recipe.py   the paper's pretraining hyperparameters as a config
"""


def train_and_evaluate(config, workdir):
  """Trains as `config.task` says ("pretrain", "probe" or "classify"), resuming from `workdir`
  if it holds checkpoints; returns the final metrics (a dict of str to float, int or lists).
  Raises ValueError for a config or workdir that cannot be run (the message names the field).

  Imported on call: `coca_jax.train.losses` and the others stay light to import."""
  # pylint: disable=import-outside-toplevel
  if config.get("task", "pretrain") == "pretrain":
    from coca_jax.train import pretrain as trainer
  else:
    from coca_jax.train import classify as trainer
  return trainer.train_and_evaluate(config, workdir)
