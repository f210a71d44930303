"""A params-only checkpoint: float32 weights (Orbax) plus the model config that built them.

  DIR/params             Orbax PyTree checkpoint of the params (nested dict of float32 arrays)
  DIR/model_config.json  the ModelConfig, so a loader needs nothing but DIR

Written by weight converters (`coca_jax.convert`) and read by anything that needs weights
without optimizer state. The config travels with the weights because the params alone do not
say how to run them (layer norm eps, pooler layout, legacy CLS mask, ...).
"""
import dataclasses
import json
import os
from typing import Any, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from coca_jax.model.config import ModelConfig, from_dict

PARAMS = "params"
MODEL_CONFIG = "model_config.json"


def save(directory: str, params: Any, model_config) -> None:
  """Writes params (cast to float32) and the validated model config under `directory`."""
  directory = os.path.abspath(directory)  # Orbax wants absolute paths
  cfg = from_dict(model_config)
  params = jax.tree.map(lambda x: np.asarray(x, dtype=np.float32), params)
  os.makedirs(directory, exist_ok=True)
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, PARAMS), params)
  with open(os.path.join(directory, MODEL_CONFIG), "w") as f:
    json.dump(dataclasses.asdict(cfg), f, indent=2, sort_keys=True)


def load_model_config(directory: str) -> ModelConfig:
  with open(os.path.join(directory, MODEL_CONFIG)) as f:
    return from_dict(json.load(f))


def load(directory: str) -> Tuple[Any, ModelConfig]:
  """-> (params as a nested dict of NumPy float32 arrays, ModelConfig)."""
  directory = os.path.abspath(directory)
  path = os.path.join(directory, PARAMS)
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.metadata(path).item_metadata.tree
    # Restore to host NumPy arrays: no device placement until the caller chooses shardings.
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    params = checkpointer.restore(path, restore_args=restore_args)
  return params, load_model_config(directory)
