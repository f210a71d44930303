"""CoCa-Base (paper Table 1): ViT-B/18 at 288 px, 12 + 12 decoder layers, width 768, 383M params.

  python -m coca_jax.model.summary --config=configs/coca_base.py
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = dict(
      vision=dict(image_size=288, patch_size=18, width=768, depth=12, num_heads=12,
                  mlp_dim=3072),
      pooler=dict(layout="cascade", num_queries=256, num_heads=12),
      text=dict(vocab_size=64000, context_length=64, width=768, depth=12, num_heads=12,
                mlp_dim=3072, pad_id=0, eos_id=3),
      decoder=dict(depth=12, num_heads=12, mlp_dim=3072, tie_embeddings=False),
      embed_dim=768,
      dtype="bfloat16",
      scan_layers=True,
  )
  return config
