"""Parameter counts of the shipped configs (jax.eval_shape: nothing is allocated)."""
import importlib.util
import pathlib

import pytest

from coca_jax.model.summary import count_params

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name, expected, tolerance", [
    ("coca_base", 383e6, 0.03),      # paper Table 1, untied embeddings
    ("coca_large", 787e6, 0.03),
    ("coca_2b", 2.1e9, 0.03),        # tied embeddings
    ("openclip_b32", 253.56e6, 0.001),  # open_clip's coca_ViT-B-32
    ("openclip_l14", 638.45e6, 0.001),  # open_clip's coca_ViT-L-14
])
def test_parameter_counts(name, expected, tolerance):
  total = count_params(load_config(name).model)["total"]
  assert abs(total - expected) / expected <= tolerance, (name, total)


def test_paper_tower_sizes():
  """Table 1 splits the count into image encoder and decoder: check both for Base."""
  counts = count_params(load_config("coca_base").model)
  assert abs(counts["image_encoder"] - 86e6) / 86e6 < 0.02
  assert abs(counts["text_decoder"] - 297e6) / 297e6 < 0.02


def test_two_b_needs_tied_embeddings():
  cfg = load_config("coca_2b").model
  cfg.decoder.tie_embeddings = False
  assert count_params(cfg)["total"] > 2.1e9 * 1.03


def test_tiny_config_is_tiny():
  assert count_params(load_config("tiny").model)["total"] < 2e6
