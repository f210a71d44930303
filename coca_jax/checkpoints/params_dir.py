"""A params-only checkpoint: weights (Orbax) plus the model config that built them.

  DIR/params             Orbax PyTree checkpoint of the params (nested dict of float32 arrays,
                         or bfloat16 ones when saved so, to halve the size)
  DIR/model_config.json  the ModelConfig, so a loader needs nothing but DIR
  DIR/tokenizer.json     optional: the tokenizer's spec, next to its file (a SentencePiece
                         .model or CLIP's BPE vocabulary), so that captions decode anywhere
  DIR/data_config.json   optional: how inputs were prepared in training (normalization or
                         mean / std, image_size, text_length), so that evaluation needs no config

Written by weight converters (`coca_jax.convert`) and read by anything that needs weights
without optimizer state. The config travels with the weights because the params alone do not
say how to run them (layer norm eps, pooler layout, legacy CLS mask, ...).
"""
import dataclasses
import json
import os
from typing import Any, Optional, Tuple

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp

from coca_jax.model.config import ModelConfig, from_dict

PARAMS = "params"
MODEL_CONFIG = "model_config.json"
TOKENIZER = "tokenizer.json"
DATA_CONFIG = "data_config.json"
DATA_FIELDS = ("normalization", "mean", "std", "image_size", "text_length")
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


def save(directory: str, params: Any, model_config, *, tokenizer: Any = None,
         dtype: str = "float32", data: Optional[dict] = None) -> None:
  """Writes params (cast to `dtype`: float32 or bfloat16), the validated model config and,
  when given (a Tokenizer or a `coca_jax.tokenizers.load` spec), the tokenizer and `data`
  (the training config's input fields, DATA_FIELDS) under `directory`."""
  directory = os.path.abspath(directory)  # Orbax wants absolute paths
  cfg = from_dict(model_config)
  if dtype not in DTYPES:
    raise ValueError(f"dtype {dtype!r} not in {sorted(DTYPES)}")
  params = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32).astype(DTYPES[dtype]), params)
  os.makedirs(directory, exist_ok=True)
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, PARAMS), params)
  with open(os.path.join(directory, MODEL_CONFIG), "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2, sort_keys=True)
  if tokenizer is not None:
    from coca_jax import tokenizers  # pylint: disable=g-import-not-at-top
    tokenizers.load(tokenizer).save(directory)  # its file, and tokenizer.json naming it
  if data is not None:
    with open(os.path.join(directory, DATA_CONFIG), "w") as f:
      json.dump({k: data[k] for k in DATA_FIELDS if data.get(k) is not None}, f, indent=2)


def load_data_config(directory: str) -> Optional[dict]:
  """The input fields saved with the params (see DATA_CONFIG), or None."""
  path = os.path.join(directory, DATA_CONFIG)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_model_config(directory: str) -> ModelConfig:
  """The ModelConfig saved in DIRECTORY/model_config.json."""
  with open(os.path.join(directory, MODEL_CONFIG)) as f:
    return from_dict(json.load(f))


def load_tokenizer(directory: str) -> Optional[Any]:
  """The tokenizer saved with the params, or None when there is none."""
  if not os.path.exists(os.path.join(directory, TOKENIZER)):
    return None
  from coca_jax import tokenizers  # pylint: disable=g-import-not-at-top
  return tokenizers.load(os.path.abspath(directory))


def load(directory: str) -> Tuple[Any, ModelConfig]:
  """-> (params as a nested dict of NumPy arrays, in the dtype saved, ModelConfig)."""
  directory = os.path.abspath(directory)
  path = os.path.join(directory, PARAMS)
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    # Restore to host NumPy arrays: no device placement until the caller chooses shardings.
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    params = checkpointer.restore(path, restore_args=restore_args)
  return params, load_model_config(directory)
