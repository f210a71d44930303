"""CoCa 2.1B (paper Table 1): ViT-g-like encoder (40 layers, width 1408, MLP 6144) at 288 px
with 18 px patches, 18 + 18 decoder layers of width 1408 / MLP 5632, tied input/output
embeddings (only the tied count lands near the paper's 2.1B).

With the paper's pretraining recipe (coca_jax/train/paper_recipe.py). On a TPU pod slice, the same
command on every host (replace the data paths in paper_recipe.py or override them):
  python train.py --config=configs/coca_2b.py --workdir=gs://my-bucket/coca_2b
A short CPU smoke run of the real architecture on the embedded dataset:
  python train.py --config=configs/coca_2b.py:smoke --workdir=/tmp/coca_2b_smoke \
      --config.global_batch_size=2 --config.num_train_steps=2 --config.log_every_steps=1
Parameter count:
  python -m coca_jax.tools.summary --config=configs/coca_2b.py
"""
from coca_jax.train.paper_recipe import paper_config, paper_model


def get_config(arg=None):
  return paper_config(paper_model("2b"), smoke=arg == "smoke")
