"""Parameter counts of the shipped configs (jax.eval_shape: nothing is allocated)."""
import importlib.util
import pathlib

import pytest

from coca_jax.tools.summary import count_params

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


def load_config_arg(name, arg):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", ["coca_base", "coca_large", "coca_2b"])
def test_paper_configs_carry_the_paper_recipe(name):
  config = load_config(name)
  assert config.global_batch_size == 65536 and config.num_train_steps == 500_000
  opt = config.optimizer
  assert (opt.name, opt.b1, opt.b2, opt.weight_decay) == ("adafactor", 0.9, 0.999, 0.01)
  assert (opt.learning_rate, opt.warmup_fraction, opt.decay) == (8e-4, 0.02, "linear")
  assert (config.loss.contrastive_weight, config.loss.caption_weight) == (1.0, 2.0)
  model = config.model
  assert (model.vision.image_size, model.vision.patch_size) == (288, 18)
  assert model.text.vocab_size == 64000 and model.pooler.layout == "cascade"
  assert config.data.image_size == 288
  assert dict(config.mesh) == {"slice": 1, "data": -1, "fsdp": 0, "tensor": 1}  # fsdp: widths


@pytest.mark.parametrize("name", ["coca_base", "coca_2b"])
def test_paper_smoke_variant_passes_the_checks(name):
  from coca_jax.train import config_checks  # pylint: disable=import-outside-toplevel
  config = load_config_arg(name, "smoke")
  config.global_batch_size, config.num_train_steps = 8, 2
  config_checks.check(config)
  assert config.data.tokenizer == "embedded"


def test_caption_finetune_variants_set_what_they_name():
  """configs/caption_finetune.py: the paper's caption-only default and the variants that keep
  zero-shot; each variant changes only its own field."""
  plain = load_config_arg("caption_finetune", None)
  assert (plain.loss.contrastive_weight, plain.loss.distill_weight) == (0.0, 0.0)
  assert tuple(plain.freeze) == ("contrastive_only",)
  assert plain.evals.at_start and plain.evals.datasets.zeroshot == "coca_shapes:validation+test"
  changed = {"embedding_path": ("freeze", ("embedding_path",)),
             "distill": ("loss", {**plain.loss.to_dict(), "distill_weight": 10.0}),
             "contrastive": ("loss", {**plain.loss.to_dict(), "contrastive_weight": 1.0})}
  for variant, (field, value) in changed.items():
    config = load_config_arg("caption_finetune", variant).to_dict()
    want = {**plain.to_dict(), field: value}
    assert config == want, variant
  with pytest.raises(ValueError, match="embedding_path"):
    load_config_arg("caption_finetune", "distil")


def test_tiny_paper_variant_changes_only_its_fields():
  """configs/tiny.py:paper differs from the default in the pooler layout and its position
  table, the class-name half's caption weight and the step it applies from, the contrastive
  weight and the number of steps, nothing else."""
  default = load_config_arg("tiny", None).to_dict()
  paper = load_config_arg("tiny", "paper").to_dict()
  assert default["model"]["pooler"].pop("pos_embedding_scale") == 3.0
  assert (paper["model"]["pooler"].pop("layout"), default["model"]["pooler"].pop("layout")) == (
      "cascade", "parallel")
  assert default["data"]["train"]["class_names"].pop("caption_weight") == 0.0
  assert default["loss"].pop("dataset_caption_weights_from") == 0.6
  paper["loss"].pop("dataset_caption_weights_from")
  assert (paper["loss"].pop("contrastive_weight"), default["loss"].pop("contrastive_weight")) == (
      1.0, 2.0)
  assert paper.pop("num_train_steps") == 2000 < default.pop("num_train_steps")
  assert default == paper
  with pytest.raises(ValueError, match="paper"):
    load_config_arg("tiny", "describe")
