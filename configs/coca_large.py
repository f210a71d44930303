"""CoCa-Large (paper Table 1): ViT-L/18 at 288 px, 12 + 12 decoder layers, width 1024, 787M.

With the paper's pretraining recipe (coca_jax/train/paper_recipe.py). On a TPU pod slice, the same
command on every host (replace the data paths in paper_recipe.py or override them):
  python train.py --config=configs/coca_large.py --workdir=gs://my-bucket/coca_large
A short CPU smoke run of the real architecture on the embedded dataset:
  python train.py --config=configs/coca_large.py:smoke --workdir=/tmp/coca_large_smoke \
      --config.global_batch_size=2 --config.num_train_steps=2 --config.log_every_steps=1
Parameter count:
  python -m coca_jax.tools.summary --config=configs/coca_large.py
"""
from coca_jax.train.paper_recipe import paper_config, paper_model


def get_config(arg=None):
  return paper_config(paper_model("large"), smoke=arg == "smoke")
