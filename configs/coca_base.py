"""CoCa-Base (paper Table 1): ViT-B/18 at 288 px, 12 + 12 decoder layers, width 768, 383M params.

With the paper's pretraining recipe (coca_jax/train/paper_recipe.py). On a TPU pod slice, the same
command on every host (replace the data paths in paper_recipe.py or override them):
  python train.py --config=configs/coca_base.py --workdir=gs://my-bucket/coca_base
A short CPU smoke run of the real architecture on the embedded dataset:
  python train.py --config=configs/coca_base.py:smoke --workdir=/tmp/coca_base_smoke \
      --config.global_batch_size=2 --config.num_train_steps=2 --config.log_every_steps=1
Parameter count:
  python -m coca_jax.tools.summary --config=configs/coca_base.py
"""
from coca_jax.train.paper_recipe import paper_config, paper_model


def get_config(arg=None):
  return paper_config(paper_model("base"), smoke=arg == "smoke")
