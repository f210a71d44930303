"""Resuming a workdir with another config: every field is refused, accepted with a warning, or
free, so that a run's checkpoints are never silently thrown away.

`WORKDIR/run_config.json` records the config the workdir's checkpoints were written with (see
`record`). Before anything is written, `check` compares the new config with it:
  * refused (what the saved state or the batch order depends on): the run stops, naming every
    such field with its old and new value, and leaves every file as it was;
  * warned (the run goes on, but not as the first one would have): each is named with what
    changes;
  * free (how the run is laid out, read or watched): nothing is said.
A field is decided by the first rule whose prefix matches its dotted path; one that no rule
names is refused. `config.checkpoint.new_run=True` sets the checkpoints aside (moved, not
deleted) and starts a new run in the same workdir. Workdirs whose checkpoints were written
before this record existed resume as they did, unchecked.
"""
import json
from typing import Any, Dict, List, Tuple

from absl import logging
from etils import epath
import jax

RUN_CONFIG = "run_config.json"

REFUSED = "refused"
WARNED = "warned"
FREE = "free"

# (dotted path prefix, decision, why / what changes), first match wins.
RULES: Tuple[Tuple[str, str, str], ...] = (
    ("seed", REFUSED, "params, data order and dropout follow the seed"),
    ("global_batch_size", REFUSED, "the data order and the contrastive loss follow the batch"),
    ("data.train", REFUSED, "the training data (datasets, splits and weights) decide the batches"),
    ("data.tokenizer", REFUSED, "token ids would change meaning"),
    ("data.text_length", REFUSED, "the inputs' shape"),
    ("data.image_size", REFUSED, "the inputs' shape"),
    ("data.normalization", REFUSED, "the pixels the model learned from"),
    ("data.mean", REFUSED, "the pixels the model learned from"),
    ("data.std", REFUSED, "the pixels the model learned from"),
    ("data.crop", REFUSED, "the pixels the model learned from"),
    ("data.max_caption_chars", REFUSED, "the captions the model learned from"),
    ("data.shuffle_window", REFUSED, "streamed data's order"),
    ("model", REFUSED, "the saved params belong to the model"),
    ("optimizer.name", REFUSED, "the saved optimizer state belongs to the optimizer"),
    ("freeze", REFUSED, "the saved optimizer state covers exactly the trained params"),
    ("task", REFUSED, "the saved state belongs to the task"),
    ("classify.label", REFUSED, "the classifier's classes"),
    ("classify.features", REFUSED, "the classifier's head"),
    ("classify.hidden_dim", REFUSED, "the classifier's head"),
    ("num_train_steps", WARNED, "the learning-rate schedule is stretched or cut to the new "
                                "length from this step on"),
    ("optimizer", WARNED, "the learning rate / optimizer settings change from this step on"),
    ("grad_accum_steps", WARNED, "the same batches, summed over another number of micro-batches "
                                 "(float rounding differs)"),
    ("loss", WARNED, "the objective changes from this step on"),
    ("classify", WARNED, "the classifier's training settings change from this step on"),
    ("data", FREE, ""),  # reader threads, read-ahead, data_dir, eval data
    ("mesh", FREE, ""),
    ("logical_rules", FREE, ""),
    ("distributed", FREE, ""),
    ("evals", FREE, ""),
    ("eval_every_steps", FREE, ""),
    ("log_every_steps", FREE, ""),
    ("checkpoint", FREE, ""),
    ("init_from", WARNED, "a fresh run's params come from it, and a resumed run with "
                          "loss.distill_weight > 0 distils toward it"),
    ("nonfinite", FREE, ""),
    ("debug", FREE, ""),
)


def decide(path: str) -> Tuple[str, str]:
  """(REFUSED | WARNED | FREE, reason) for a dotted config path."""
  for prefix, decision, why in RULES:
    if path == prefix or path.startswith(prefix + "."):
      return decision, why
  return REFUSED, "a field without a resume rule"


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
  if isinstance(tree, dict) and tree:
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
  return {prefix: tree}


def _as_json(config) -> Dict[str, Any]:
  text = config.to_json_best_effort() if hasattr(config, "to_json_best_effort") else json.dumps(
      config)
  return json.loads(text)


def differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
  """(dotted path, old value, new value) of every leaf that differs ("<absent>" when missing);
  a whole sub-tree that differs in kind (a dataset spec turned into a mixture) is one entry."""
  flat_old, flat_new = _flatten(old), _flatten(new)
  absent = "<absent>"
  return [(path, flat_old.get(path, absent), flat_new.get(path, absent))
          for path in sorted(set(flat_old) | set(flat_new))
          if flat_old.get(path, absent) != flat_new.get(path, absent)]


def has_checkpoints(workdir) -> bool:
  """Whether WORKDIR/checkpoints holds a step directory."""
  checkpoints = epath.Path(workdir) / "checkpoints"
  return checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())


def check(config, workdir) -> None:
  """Refuses, warns about or lets through the config's differences from the one the workdir's
  checkpoints were written with; with `config.checkpoint.new_run`, sets them aside instead.

  Raises:
    ValueError: a refused field differs (every one is named, old and new value); nothing in
      the workdir has been touched.
  """
  workdir = epath.Path(workdir)
  if not has_checkpoints(workdir):
    return
  if config.checkpoint.get("new_run", False):
    _set_aside(workdir)
    return
  recorded = workdir / RUN_CONFIG
  if not recorded.exists():
    logging.warning("%s: checkpoints without a recorded config (written before %s existed); "
                    "resuming without comparing configs", workdir, RUN_CONFIG)
    return
  found = differences(json.loads(recorded.read_text()), _as_json(config))
  refused, warned = [], []
  for path, old, new in found:
    decision, why = decide(path)
    line = f"{path}: {old!r} -> {new!r} ({why})"
    if decision == REFUSED:
      refused.append(line)
    elif decision == WARNED:
      warned.append(line)
  if refused:
    raise ValueError(
        f"{workdir} holds checkpoints written with another config; these fields cannot change "
        "when a run resumes:\n  " + "\n  ".join(refused) + "\nNothing was written. Resume with "
        f"the recorded values ({recorded}), use another workdir, or pass "
        "--config.checkpoint.new_run=True to set the checkpoints aside (moved, not deleted) and "
        "start a new run here.")
  for line in warned:
    message = f"resuming with a changed config: {line}"
    logging.warning(message)
    if jax.process_index() == 0:
      print(f"warning: {message}", flush=True)


def _set_aside(workdir: epath.Path):
  """Moves checkpoints/ and run_config.json to checkpoints.set_aside.N/ (process 0)."""
  n = 1
  while (workdir / f"checkpoints.set_aside.{n}").exists():
    n += 1
  target = workdir / f"checkpoints.set_aside.{n}"
  if jax.process_index() == 0:
    (workdir / "checkpoints").rename(target)
    for name in (RUN_CONFIG, "config.json"):
      if (workdir / name).exists():
        (workdir / name).rename(target / name)
    print(f"checkpoint.new_run: the earlier checkpoints are in {target}; starting a new run",
          flush=True)


def record(config, workdir) -> None:
  """Writes config.json (the run's resolved config) and run_config.json (what the checkpoints
  are written with); process 0 only."""
  if jax.process_index() != 0:
    return
  workdir = epath.Path(workdir)
  text = config.to_json_best_effort(indent=2)
  (workdir / "config.json").write_text(text)
  (workdir / RUN_CONFIG).write_text(text)
