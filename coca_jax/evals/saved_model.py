"""A saved model ready to evaluate or run: the config with the checkpoint's own model config,
the mesh, the tokenizer and the params sharded over the mesh, from any saved form (a training
workdir, one checkpoint step, an export or a converted open_clip model).
"""
import dataclasses
from typing import Any, Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np

from coca_jax import checkpoints, tokenizers
from coca_jax.model import create_model
from coca_jax.parallel import sharding
from coca_jax.train import config as train_config


def with_checkpoint_model(config, model_config):
  """The config with the checkpoint's model in place of its own (a saved model is evaluated as
  what it was trained as; a fine-tune config's model may be "init_from"), and data sizes of 0
  taken from that model."""
  config = ml_collections.ConfigDict(config.to_dict())
  del config["model"]
  config.model = dataclasses.asdict(model_config)
  return train_config.sizes_from_model(config)


def load_model(config, path, mesh, rules, loaded=None):
  """(model, params sharded over the mesh) from any saved form; the model is built from the
  config saved with the params (it is what they were trained as). `loaded`: the
  (params, model config) `checkpoints.load_params(path)` gave, if already read."""
  params, model_config = loaded or checkpoints.load_params(path)
  if "head" in params and "decoder" not in params:
    raise ValueError(f"{path} holds an image classifier (a probe or a classification "
                     "fine-tune: encoder and head), not a CoCa model: its top-1 / top-5 are in "
                     "its final_metrics.json, and train.py with the same config and workdir "
                     "evaluates it again")
  model = create_model(model_config)
  cfg = model.cfg
  if config.data.image_size != cfg.vision.image_size:
    raise ValueError(f"config.data.image_size {config.data.image_size} differs from the "
                     f"checkpoint's model ({cfg.vision.image_size})")
  if config.data.text_length > cfg.text.context_length:
    raise ValueError(f"config.data.text_length {config.data.text_length} exceeds the "
                     f"checkpoint's text.context_length {cfg.text.context_length}")
  size = cfg.vision.image_size
  example = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, config.data.text_length), jnp.int32))
  boxed = jax.eval_shape(lambda k: model.init(k, *example)["params"], jax.random.key(0))
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  expected = _shapes(nn.unbox(boxed))
  got = _shapes(params)
  if expected != got:
    differ = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
    raise ValueError(f"{path}: its params do not match its own model config; e.g. "
                     + ", ".join(f"{k}: {got.get(k)} (expected {expected.get(k)})"
                                 for k in differ[:5]))
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  return model, jax.device_put(params, shardings)


def _shapes(tree) -> Dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in flat}


def _check_tokenizer(tokenizer, model):
  t = model.cfg.text
  if tokenizer.vocab_size > t.vocab_size or tokenizer.pad_id != t.pad_id:
    raise ValueError(f"config.data.tokenizer (vocabulary {tokenizer.vocab_size}, pad "
                     f"{tokenizer.pad_id}) does not fit the checkpoint's model (vocabulary "
                     f"{t.vocab_size}, pad {t.pad_id})")


@dataclasses.dataclass(frozen=True)
class SavedModel:
  """A saved model ready to run: the `config` with the checkpoint's model in place, the device
  `mesh` and logical `rules`, the `tokenizer`, the Flax `model` and its `params` sharded over
  the mesh (float32)."""
  config: Any
  mesh: Mesh
  rules: tuple
  tokenizer: Any
  model: Any
  params: Any


def load(config, checkpoint_path) -> SavedModel:
  """What evaluation and inference start from, for a training workdir, a checkpoint step, an
  export or a converted open_clip model. Raises ValueError when the config's data sizes or
  tokenizer do not fit the checkpoint's model, FileNotFoundError when nothing is there."""
  loaded = checkpoints.load_params(checkpoint_path)
  config = with_checkpoint_model(config, loaded[1])
  mesh = sharding.config_mesh(config)
  rules = sharding.config_rules(config)
  tokenizer = tokenizers.load(config.data.tokenizer)
  model, params = load_model(config, checkpoint_path, mesh, rules, loaded)
  _check_tokenizer(tokenizer, model)
  return SavedModel(config, mesh, rules, tokenizer, model, params)
