"""Parameter counts per tower, computed with jax.eval_shape (nothing is allocated).

  python -m coca_jax.tools.summary --config=configs/coca_base.py
"""
import math
from typing import Dict

import flax
import jax
import jax.numpy as jnp

from coca_jax.model.coca import create_model
from coca_jax.model.config import from_dict


def abstract_params(model_config):
  """The params' shapes and dtypes (with their logical partitioning boxes)."""
  cfg = from_dict(model_config)
  model = create_model(cfg)
  images = jax.ShapeDtypeStruct((1, cfg.vision.image_size, cfg.vision.image_size, 3),
                                jnp.float32)
  text = jax.ShapeDtypeStruct((1, cfg.text.context_length), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), images, text)["params"]


def count_params(model_config) -> Dict[str, int]:
  """{'image_encoder', 'poolers', 'text_decoder', 'total', ...}: parameter counts."""
  params = flax.linen.unbox(abstract_params(model_config))
  size = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  towers = {
      "image_encoder": size(params["visual"]),
      "poolers": size(params["pooling"]),
      "token_embedding": size(params["token_embedding"]),
      "unimodal_text": size(params["text"]),
      "multimodal_decoder": size(params["decoder"]),
      "logit_scale": size(params["logit_scale"]),
  }
  towers["text_decoder"] = (towers["token_embedding"] + towers["unimodal_text"]
                            + towers["multimodal_decoder"])
  towers["total"] = size(params)
  return towers


def main(argv):
  """Prints `count_params` of `--config`'s model: one line per tower, exact and in millions."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  config = flags.FLAGS.config
  for name, n in count_params(config.model).items():
    print(f"{name:20s} {n:>15,d}  ({n / 1e6:.2f}M)")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  flags.mark_flags_as_required(["config"])
  app.run(main)
