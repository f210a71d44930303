"""Attentive probe on a frozen CoCa image encoder (the paper's frozen-encoder protocol): a fresh
attentional pooler (one learned query over the encoder's output tokens) and a linear
classifier; the encoder gets no update and no optimizer state.

  python train.py --config=configs/probe_attentive.py --workdir=/tmp/probe_attentive \
      --config.init_from=/tmp/coca_tiny
Options and ImageNet: as in configs/probe_linear.py.
"""
from coca_jax.train.config import base_config


def get_config():
  config = base_config()
  config.task = "probe"
  config.model = "init_from"  # the checkpoint's model config
  config.classify = dict(label="label", features="attentive", hidden_dim=0, head_dropout=0.0,
                         label_smoothing=0.0, freeze=(), manual_dir="", cache_features=False)
  config.data.update(dict(train=dict(name="coca_shapes", split="train"),
                          eval=dict(name="coca_shapes", split="validation"),
                          image_size=0, text_length=0, crop="center"))
  config.num_train_steps = 1000
  config.global_batch_size = 256
  config.optimizer.update(dict(name="adamw", learning_rate=1e-3, warmup_fraction=0.05,
                               decay="cosine", weight_decay=1e-4, grad_clip_norm=1.0))
  config.checkpoint.every_steps = 500
  config.log_every_steps = 100
  config.eval_every_steps = 0  # top-1 / top-5 at the end
  config.evals.batch_size = 256
  return config
