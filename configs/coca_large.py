"""CoCa-Large (paper Table 1): ViT-L/18 at 288 px, 12 + 12 decoder layers, width 1024, 787M.

With the paper's pretraining recipe (coca_jax/paper_recipe.py). On a TPU pod slice, the same
command on every host (replace the data paths in paper_recipe.py or override them):
  python train.py --config=configs/coca_large.py --workdir=gs://my-bucket/coca_large
A short CPU smoke run of the real architecture on the embedded dataset:
  python train.py --config=configs/coca_large.py:smoke --workdir=/tmp/coca_large_smoke \
      --config.global_batch_size=2 --config.num_train_steps=2 --config.log_every_steps=1
Parameter count:
  python -m coca_jax.model.summary --config=configs/coca_large.py
"""
from coca_jax.paper_recipe import paper_config


def get_config(arg=None):
  model = dict(
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
  return paper_config(model, smoke=arg == "smoke")
