"""CoCa 2.1B (paper Table 1): ViT-g-like encoder (40 layers, width 1408, MLP 6144) at 288 px
with 18 px patches, 18 + 18 decoder layers of width 1408 / MLP 5632, tied input/output
embeddings (only the tied count lands near the paper's 2.1B).

  python -m coca_jax.model.summary --config=configs/coca_2b.py
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = dict(
      vision=dict(image_size=288, patch_size=18, width=1408, depth=40, num_heads=16,
                  mlp_dim=6144),
      pooler=dict(layout="cascade", num_queries=256, num_heads=16),
      text=dict(vocab_size=64000, context_length=64, width=1408, depth=18, num_heads=16,
                mlp_dim=5632, pad_id=0, eos_id=3),
      decoder=dict(depth=18, num_heads=16, mlp_dim=5632, tie_embeddings=True),
      embed_dim=1408,
      dtype="bfloat16",
      scan_layers=True,
  )
  return config
