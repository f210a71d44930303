"""CoCa 2.1B (paper Table 1): ViT-g-like encoder (40 layers, width 1408, MLP 6144) at 288 px
with 18 px patches, 18 + 18 decoder layers of width 1408 / MLP 5632, tied input/output
embeddings (only the tied count lands near the paper's 2.1B).

With the paper's pretraining recipe (coca_jax/paper_recipe.py). On a TPU pod slice, the same
command on every host (replace the data paths in paper_recipe.py or override them):
  python train.py --config=configs/coca_2b.py --workdir=gs://my-bucket/coca_2b
A short CPU smoke run of the real architecture on the embedded dataset:
  python train.py --config=configs/coca_2b.py:smoke --workdir=/tmp/coca_2b_smoke \
      --config.global_batch_size=2 --config.num_train_steps=2 --config.log_every_steps=1
Parameter count:
  python -m coca_jax.model.summary --config=configs/coca_2b.py
"""
from coca_jax.paper_recipe import paper_config


def get_config(arg=None):
  model = dict(
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
  return paper_config(model, smoke=arg == "smoke")
