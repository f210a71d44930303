"""Fine-tuning through train.py's `train_and_evaluate`: classification end to end on
imagenet2012 prepared from a tiny self-made manual directory (top-1 / top-5), and the caption
fine-tune config, whose contrastive-only params stay bitwise as loaded with no optimizer state."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from coca_jax import checkpoints
from coca_jax.train import freeze
from coca_jax.evals import evaluate
from coca_jax.model.config import from_dict
from coca_jax.train import train_and_evaluate
from test_eval_cli import NUM_VAL, make_imagenet_manual_dir
from train_fixtures import checkpoint_tree, load_config, micro_config, random_micro_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  return random_micro_export(tmp_path_factory.mktemp("export") / "params")


def _equal(a, b):
  return a.dtype == b.dtype and np.array_equal(a, b)


def test_classification_fine_tune_end_to_end_on_imagenet_from_a_manual_dir(export, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  labels_dir = pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012"
  val_labels = (labels_dir / "validation_labels.txt").read_text().split()[:NUM_VAL]
  make_imagenet_manual_dir(tmp_path / "manual", val_labels)
  config = load_config("finetune_classify")
  config.init_from = str(export)
  config.classify.manual_dir = str(tmp_path / "manual")
  config.classify.hidden_dim = 16
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.num_threads = 1
  config.num_train_steps = 3
  config.global_batch_size = 8
  config.log_every_steps = 1
  config.checkpoint.async_save = False
  config.evals.batch_size = 8
  result = train_and_evaluate(config, str(tmp_path / "run"))
  assert result["classify/examples"] == NUM_VAL
  assert result["classify/chance"] == pytest.approx(1 / 1000)
  assert 0 <= result["classify/top1"] <= result["classify/top5"] <= 1
  # End to end: the encoder moved, every part of it with optimizer state.
  saved = checkpoint_tree(tmp_path / "run")
  loaded, _ = checkpoints.load_params(export)
  moved = jax.tree.map(lambda a, b: not _equal(a, b), saved["params"]["visual"],
                       loaded["visual"])
  assert all(jax.tree.leaves(moved))
  assert any("['visual']" in p for p in saved["opt_state_paths"])
  assert set(saved["params"]["head"]) == {"hidden", "out"}
  assert saved["params"]["head"]["out"]["kernel"].shape == (16, 1000)


def test_caption_fine_tune_leaves_contrastive_params_untouched(export, tmp_path):
  config = load_config("caption_finetune")
  assert (config.loss.contrastive_weight, config.optimizer.learning_rate,
          config.global_batch_size, config.num_train_steps) == (0.0, 1e-5, 128, 50_000)
  config.init_from = str(export)
  config.num_train_steps = 3
  config.global_batch_size = 16
  config.log_every_steps = 1
  config.optimizer.learning_rate = 1e-3  # large enough that every trained param moves
  config.checkpoint.async_save = False
  config.data.num_threads = 1
  config.data.eval.split = "validation[:16]"
  config.evals.update(dict(batch_size=16, num_caption_examples=16, gallery=0))
  result = train_and_evaluate(config, str(tmp_path / "run"))
  assert "captions/cider" in result and "captions/bleu4" in result
  saved = checkpoint_tree(tmp_path / "run")
  loaded, _ = checkpoints.load_params(export)
  prefixes = freeze.contrastive_only(from_dict(micro_config().model))
  assert set(prefixes) >= {"pooling/contrastive_pooler", "pooling/proj", "text/proj",
                           "logit_scale"}
  kept_saved, trained_saved = freeze.split(saved["params"], prefixes)[::-1]
  kept_loaded, trained_loaded = freeze.split(loaded, prefixes)[::-1]
  assert all(jax.tree.leaves(jax.tree.map(_equal, kept_saved, kept_loaded)))
  # Weight matrices among them would decay under AdamW/Adafactor if they were optimized.
  assert kept_saved["pooling"]["proj"].ndim == 2
  # No optimizer state for them; the rest trained.
  for path in saved["opt_state_paths"]:
    assert not any(all(f"['{k}']" in path for k in p.split("/")) for p in prefixes), path
  assert any("['decoder']" in p for p in saved["opt_state_paths"])
  moved = jax.tree.map(lambda a, b: not _equal(a, b), trained_saved, trained_loaded)
  assert all(jax.tree.leaves(moved)), moved
  # eval.py takes the fine-tune config as it is (model "init_from", data sizes 0): the model
  # and sizes come from the checkpoint it evaluates.
  config.evals.update(dict(val_loss=False, captions=True, zeroshot=False))
  evaluated = evaluate.evaluate(config, str(tmp_path / "run"))
  assert evaluated["captions/cider"] == pytest.approx(result["captions/cider"], abs=1e-6)


def _tiny_caption_fine_tune(export, **changes):
  """configs/caption_finetune.py at test size (micro model from `export`, 16 eval images)."""
  config = load_config("caption_finetune")
  config.init_from = str(export)
  config.num_train_steps = 4
  config.global_batch_size = 16
  config.log_every_steps = 1
  config.optimizer.learning_rate = 1e-3
  config.checkpoint.async_save = False
  config.checkpoint.every_steps = 2
  config.checkpoint.max_to_keep = 5
  config.data.num_threads = 1
  config.data.eval.split = "validation[:16]"
  config.evals.update(dict(batch_size=16, num_caption_examples=16, gallery=0))
  config.evals.datasets.zeroshot = "coca_shapes:validation[:16]"
  for key, value in changes.items():
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


def test_caption_fine_tune_through_the_embedding_path_keeps_zero_shot_exactly(
    export, tmp_path, capsys):
  """freeze=embedding_path: only the multimodal decoder trains, so every param the embeddings
  read stays bitwise as loaded and zero-shot is the same before and after; the run evaluates
  the starting params (evals.at_start) and reports each figure before -> after."""
  config = _tiny_caption_fine_tune(export, freeze=("embedding_path",))
  result = train_and_evaluate(config, str(tmp_path / "run"))
  saved = checkpoint_tree(tmp_path / "run")
  loaded, _ = checkpoints.load_params(export)
  kept_saved, trained_saved = freeze.split(saved["params"], freeze.embedding_path())[::-1]
  kept_loaded, trained_loaded = freeze.split(loaded, freeze.embedding_path())[::-1]
  assert set(trained_saved) == {"decoder"}
  assert all(jax.tree.leaves(jax.tree.map(_equal, kept_saved, kept_loaded)))
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: not _equal(a, b), trained_saved,
                                          trained_loaded)))
  assert result["zeroshot/examples"] == 16
  assert result["start/zeroshot/top1"] == result["zeroshot/top1"]
  assert result["val/caption"] < result["start/val/caption"]  # the decoder did train
  assert result["val/contrastive"] == result["start/val/contrastive"]
  start = json.loads((tmp_path / "run" / "start_metrics.json").read_text())
  assert start["val/caption"] == result["start/val/caption"]
  assert "captions/cider" in start
  out = capsys.readouterr().out
  assert "before -> after this run" in out
  assert "16 images of coca_shapes:validation[:16]" in out
  top1 = f"{100 * result['zeroshot/top1']:.1f}%"
  assert any(line.split()[:2] == ["zero-shot", "top-1"] and line.split()[-3:] == [top1, "->",
                                                                                 top1]
             for line in out.splitlines()), out


def test_distillation_toward_the_starting_model_resumes_exactly(export, tmp_path, capsys):
  """loss.distill_weight: the reference is the init_from params, held in memory only (the
  checkpoint holds the same tree as without it) and read again on resume, so a run resumed
  from its step-2 checkpoint ends with the uninterrupted run's params bit for bit; the
  progress line shows the distillation part."""
  changes = {"loss.distill_weight": 1.0, "evals.captions": False, "evals.at_start": False}
  train_and_evaluate(_tiny_caption_fine_tune(export, **changes), str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert "distill " in next(line for line in out.splitlines() if line.startswith("step 1/4"))
  whole = checkpoint_tree(tmp_path / "run")
  assert set(whole["params"]) == set(checkpoints.load_params(export)[0])
  shutil.rmtree(tmp_path / "run" / "checkpoints" / "4")
  train_and_evaluate(_tiny_caption_fine_tune(export, **changes), str(tmp_path / "run"))
  assert "resumed from" in capsys.readouterr().out
  resumed = checkpoint_tree(tmp_path / "run")
  assert all(jax.tree.leaves(jax.tree.map(_equal, resumed["params"], whole["params"])))
  assert resumed["opt_state_paths"] == whole["opt_state_paths"]
  without_start = _tiny_caption_fine_tune(export, init_from="", **changes)
  del without_start["model"]
  without_start.model = micro_config().model
  with pytest.raises(ValueError, match="init_from"):
    train_and_evaluate(without_start, str(tmp_path / "other"))
