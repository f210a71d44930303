"""CoCa-Large (paper Table 1): ViT-L/18 at 288 px, 12 + 12 decoder layers, width 1024, 787M.

  python -m coca_jax.model.summary --config=configs/coca_large.py
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = dict(
      vision=dict(image_size=288, patch_size=18, width=1024, depth=24, num_heads=16,
                  mlp_dim=4096),
      pooler=dict(layout="cascade", num_queries=256, num_heads=16),
      text=dict(vocab_size=64000, context_length=64, width=1024, depth=12, num_heads=16,
                mlp_dim=4096, pad_id=0, eos_id=3),
      decoder=dict(depth=12, num_heads=16, mlp_dim=4096, tie_embeddings=False),
      embed_dim=1024,
      dtype="bfloat16",
      scan_layers=True,
  )
  return config
