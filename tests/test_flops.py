"""coca_jax.tools.flops (model FLOPs counted tower by tower) against XLA's own cost analysis.

XLA counts a scanned layer loop's body once, so the model is unrolled here. XLA also counts
what the model count leaves out (layer norms, softmax, GELU, the optimizer), so the two agree
within a tolerance, and the model count may only be the smaller one.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from coca_jax.tools import flops as flops_lib
from coca_jax.train import losses
from coca_jax.model import create_model

# Wide enough for matmuls to dominate, as in real sizes; two layout variants.
PAPER = dict(
    vision=dict(image_size=32, patch_size=4, width=128, depth=2, num_heads=2, mlp_dim=512),
    pooler=dict(layout="cascade", num_queries=16, num_heads=2),
    text=dict(vocab_size=2048, context_length=16, width=128, depth=2, num_heads=2,
              mlp_dim=512, pad_id=0, eos_id=3),
    decoder=dict(depth=2, num_heads=2, mlp_dim=512),
    embed_dim=128,
)
OPEN_CLIP = dict(
    vision=dict(image_size=32, patch_size=4, width=128, depth=2, num_heads=2, mlp_dim=512,
                class_token=True, pre_norm=True, patch_bias=False),
    pooler=dict(layout="single", num_queries=17, num_heads=2),
    text=dict(vocab_size=2048, context_length=16, width=128, depth=2, num_heads=2,
              mlp_dim=512, pad_id=0, eos_id=3, legacy_cls_mask=True),
    decoder=dict(depth=2, num_heads=2, mlp_dim=512, mlp_after_self_attention=True),
    embed_dim=128,
)
BATCH = 4
TOL = 0.10  # relative: XLA's extra elementwise work at these widths stays under a few %


def _xla_flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def _setup(model_config):
  model = create_model(dict(model_config, scan_layers=False))
  cfg = model.cfg
  images = jnp.zeros((BATCH, cfg.vision.image_size, cfg.vision.image_size, 3))
  text = jnp.ones((BATCH, cfg.text.context_length), jnp.int32)
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images[:1], text[:1]))
  return model, cfg, params["params"], images, text


@pytest.mark.parametrize("model_config", [PAPER, OPEN_CLIP], ids=["paper", "open_clip"])
def test_forward_and_towers_match_xla(model_config):
  model, cfg, params, images, text = _setup(model_config)
  counts = flops_lib.forward_flops(cfg)
  apply = lambda method: (lambda p, x: model.apply({"params": p}, x, method=method))
  image_xla = _xla_flops(apply("encode_image"), params, images) / BATCH
  text_xla = _xla_flops(apply("encode_text"), params, text) / BATCH
  forward_xla = _xla_flops(lambda p, i, t: model.apply({"params": p}, i, t),
                           params, images, text) / BATCH
  image = counts["patch_embedding"] + counts["image_encoder"] + counts["poolers"]
  for name, ours, xla in (("image towers", image, image_xla),
                          ("unimodal text", counts["unimodal_text"], text_xla),
                          ("forward", counts["forward"], forward_xla)):
    assert ours <= xla * 1.001, (name, ours, xla)
    assert abs(ours - xla) / xla < TOL, (name, ours, xla)


def test_training_is_three_forwards():
  model, cfg, params, images, text = _setup(PAPER)

  def loss(p, i, t):
    return losses.coca_loss(model.apply({"params": p}, i, t), t, pad_id=0)["total"]

  train_xla = _xla_flops(jax.grad(loss), params, images, text) / BATCH
  ours = flops_lib.forward_flops(cfg)["train"]
  assert abs(ours - train_xla) / train_xla < TOL, (ours, train_xla)


def test_text_without_a_token_to_predict_is_refused():
  """As `CoCa.__call__`: a 1-token text has no next token, so no decoder count exists."""
  with pytest.raises(ValueError, match="at least 2 tokens"):
    flops_lib.forward_flops(PAPER, text_length=1)
  short = flops_lib.forward_flops(PAPER, text_length=2)
  assert short["vocab_projection"] == 2 * 1 * 128 * 2048  # one decoded position
