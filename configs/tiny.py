"""Tiny CoCa that trains in minutes on a CPU (paper layout: cascade poolers, one MLP per
multimodal layer).

  python -m coca_jax.model.summary --config=configs/tiny.py
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = dict(
      vision=dict(image_size=32, patch_size=4, width=64, depth=2, num_heads=2, mlp_dim=256),
      pooler=dict(layout="cascade", num_queries=16, num_heads=2),
      text=dict(vocab_size=1000, context_length=24, width=64, depth=2, num_heads=2,
                mlp_dim=256, pad_id=0, eos_id=3),
      decoder=dict(depth=2, num_heads=2, mlp_dim=256),
      embed_dim=64,
  )
  return config
