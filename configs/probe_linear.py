"""Linear probe on a frozen CoCa image encoder: a linear classifier on the image embedding
(the contrastive pooler's output); the encoder gets no update and no optimizer state.

  python train.py --config=configs/probe_linear.py --workdir=/tmp/probe_linear \
      --config.init_from=/tmp/coca_tiny
The model config comes from the checkpoint; the embedded dataset's 24 classes by default.
ImageNet from the user's own tars (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar):
  ... --config.data.train.name=imagenet2012 --config.data.eval.name=imagenet2012 \
      --config.classify.manual_dir=/path/to/tars --config.data.normalization=openai_clip
Other labels of the embedded dataset: --config.classify.label=size (colour, shape, size, cell).
Another feature: --config.classify.features=encoder_mean (the encoder's tokens averaged).
The encoder runs over the train split once (centre crops) and the head trains on the stored
features (workdir/feature_cache); --config.classify.cache_features=False runs it every step.
"""
from coca_jax.train.config import base_config


def get_config():
  config = base_config()
  config.task = "probe"
  config.model = "init_from"  # the checkpoint's model config
  config.classify = dict(label="label", features="embedding", hidden_dim=0, head_dropout=0.0,
                         label_smoothing=0.0, freeze=(), manual_dir="",
                         cache_features=True)
  config.data.update(dict(train=dict(name="coca_shapes", split="train"),
                          eval=dict(name="coca_shapes", split="validation"),
                          image_size=0, text_length=0, crop="center"))
  config.num_train_steps = 1000
  config.global_batch_size = 256
  config.optimizer.update(dict(name="adamw", learning_rate=1e-2, warmup_fraction=0.05,
                               decay="cosine", weight_decay=0.0, grad_clip_norm=0.0))
  config.checkpoint.every_steps = 500
  config.log_every_steps = 100
  config.eval_every_steps = 0  # top-1 / top-5 at the end
  config.evals.batch_size = 256
  return config
