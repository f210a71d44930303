"""The caption evaluator on the embedded dataset: keys the trainer prints, exact example count,
the blank-image baseline and the gallery picture."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from coca_jax import tokenizers
from coca_jax.parallel import sharding
from coca_jax.evals.captions import GALLERY_FILE, ShapesCaptionEvaluator
from coca_jax.model import create_model
from train_fixtures import micro_config


class RecordingWriter:
  def __init__(self):
    self.images = []

  def write_images(self, step, images):
    self.images.append((step, images))


def _setup(num_examples=10, gallery=3, batch_size=8):
  config = micro_config()
  config.evals.num_caption_examples = num_examples
  config.evals.gallery = gallery
  config.evals.batch_size = batch_size
  model = create_model(config.model)
  size, length = config.model.vision.image_size, config.data.text_length
  params = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                      jnp.zeros((1, length), jnp.int32))["params"]
  params = nn.unbox(params)
  mesh = sharding.make_mesh({"data": -1})
  return config, model, params, mesh, tokenizers.load(config.data.tokenizer)


def test_shapes_caption_evaluator_keys_count_and_gallery(tmp_path):
  config, model, params, mesh, tok = _setup()
  evaluator = ShapesCaptionEvaluator(config, model, mesh, tok)
  assert evaluator.final_only
  writer = RecordingWriter()
  results = evaluator.run_final(params, workdir=tmp_path, writer=writer, step=7)
  for key in ("captions/attribute_score", "captions/blank_image_attribute_score",
              "captions/cider", "captions/bleu4"):
    assert isinstance(results[key], float) and np.isfinite(results[key]), key
  # 10 examples with a global batch of 8 on 8 devices: the second batch is mostly padding.
  assert results["captions/num_examples"] == 10
  assert [c["index"] for c in evaluator.captions] == list(range(10))
  examples = results["captions/examples"]
  assert 0 < len(examples) <= 10
  assert all(isinstance(g, str) and isinstance(r, str) and r for g, r in examples)
  picture = Image.open(tmp_path / GALLERY_FILE)
  assert picture.mode == "RGB" and picture.width > 128 and picture.height > 128
  (step, images), = writer.images
  assert step == 7 and images["captions/gallery"].shape[0] == 1
  assert images["captions/gallery"].shape[1:] == (picture.height, picture.width, 3)
