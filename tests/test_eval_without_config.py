"""Evaluation and inference from a checkpoint alone: a workdir, a checkpoint step and an export
evaluate to the same results with and without --config; exports record how inputs were
prepared; older exports fall back to OpenAI's constants and CLIP's tokenizer and say so."""
import json
import shutil
import subprocess
import sys

import pytest

from coca_jax.checkpoints import params_dir
from coca_jax.train import config as train_config
from coca_jax.export import export
from train_fixtures import ROOT, micro_config, run_train, subprocess_env

DATASET = "coca_shapes:validation[:16]"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  root = tmp_path_factory.mktemp("saved")
  # In a subprocess: in-process training starts TensorFlow's runtime (summary writers), after
  # which a later test's lazy torchvision import crashes the process.
  result = run_train(root / "workdir", "--config.num_train_steps=2")
  assert result.returncode == 0, result.stderr[-3000:]
  export(str(root / "workdir"), str(root / "export"))
  return root


def run_evaluation(config, path):
  # Imported here: TensorFlow (under clu) loaded at collection, before torch, crashes a later
  # module's torch import.
  from coca_jax.evals import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.evaluate(config, path)


def evals_only(config):
  config = train_config.ml_collections.ConfigDict(config.to_dict())
  config.evals.update(zeroshot=True, val_loss=False, captions=False, retrieval=False,
                      generative_zeroshot=False, batch_size=8)
  config.evals.datasets = dict(zeroshot=DATASET, retrieval="", captions="")
  return config


@pytest.mark.parametrize("form", ["workdir", "step", "export"])
def test_same_results_with_and_without_a_config(saved, form):
  path = {"workdir": saved / "workdir", "step": saved / "workdir" / "checkpoints" / "2",
          "export": saved / "export"}[form]
  with_config = run_evaluation(evals_only(micro_config()), str(path))
  alone = run_evaluation(evals_only(train_config.from_checkpoint(str(path))), str(path))
  assert with_config == alone
  assert with_config["zeroshot/examples"] == 16


def test_exports_record_input_settings(saved):
  data = params_dir.load_data_config(str(saved / "export"))
  assert data == {"normalization": "openai_clip", "image_size": 16, "text_length": 16}


def test_older_exports_fall_back_and_say_so(saved, tmp_path, capsys):
  old = tmp_path / "old"
  shutil.copytree(saved / "export", old)
  (old / params_dir.DATA_CONFIG).unlink()
  (old / params_dir.TOKENIZER).unlink()
  config = train_config.from_checkpoint(str(old))
  out = capsys.readouterr().out
  assert "CLIP's BPE" in out and "OpenAI's normalisation" in out
  assert config.data.tokenizer == "clip_bpe" and config.data.normalization == "openai_clip"
  assert config.data.image_size == 16 and config.data.text_length == 16
  with pytest.raises(FileNotFoundError, match="pass --config"):
    train_config.from_checkpoint(str(tmp_path))


def test_eval_command_without_config(saved, tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "eval.py"), f"--checkpoint={saved / 'export'}",
       "--evals=zeroshot", f"--dataset={DATASET}", "--batch_size=8",
       f"--output={tmp_path / 'out'}"], env=subprocess_env(), capture_output=True, text=True,
      timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
  expected = run_evaluation(evals_only(micro_config()), str(saved / "export"))
  assert got["zeroshot/top1"] == expected["zeroshot/top1"]
  assert got["zeroshot/examples"] == 16


def test_infer_command_without_config(saved, tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from coca_jax.inference.batch import infer  # pylint: disable=g-import-not-at-top
  result = subprocess.run(
      [sys.executable, "-m", "coca_jax.inference.batch", f"--checkpoint={saved / 'workdir'}",
       f"--dataset={DATASET}", "--outputs=image_embeddings", "--batch_size=8",
       f"--output={tmp_path / 'out'}"], env=subprocess_env(), capture_output=True, text=True,
      timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  infer(micro_config(), str(saved / "workdir"), str(tmp_path / "with"), DATASET,
        ("image_embeddings",), batch_size=8)
  # (One device there, eight here: the same numbers up to float rounding.)
  np.testing.assert_allclose(np.load(tmp_path / "out" / "image_embeddings.npy"),
                             np.load(tmp_path / "with" / "image_embeddings.npy"), atol=1e-6)
