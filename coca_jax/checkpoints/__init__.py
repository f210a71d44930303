"""Everything a run writes to disk and reads back.

What one training checkpoint holds, WORKDIR/checkpoints/<step>/:
  state/   the train state (`train_state.py`): {"params": every param, frozen ones included,
           "opt_state": the optimizer state of the trainable params, "step": int32,
           "nonfinite": {"count", "first_step"}}, one Orbax PyTree
  data/    each process's data iterator position, small JSON (`data_iterator.py`)
Beside them, WORKDIR/config.json and run_config.json: the config the checkpoints were written
with, which `resume_rules.py` compares with a resuming config before anything is written.

A params-only directory (`params_dir.py`: exports and converted open_clip models) holds the
params, the model config and, when known, the tokenizer and input preparation.
`load_params` reads params from either kind, or from one checkpoint step.
"""
from coca_jax.checkpoints.train_state import latest_state_dir, load_params, make_manager
from coca_jax.checkpoints.train_state import restore_latest, save

__all__ = ["latest_state_dir", "load_params", "make_manager", "restore_latest", "save"]
