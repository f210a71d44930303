"""Fine-tunes a CoCa image encoder end to end with a classification head (on the pooled image
embedding by default): label smoothing, layer-wise learning-rate decay, warmup + cosine,
gradient clipping 1.0; top-1 / top-5 on the eval split every 5,000 steps and at the end.

ImageNet from the user's own tars (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar in DIR;
TFDS prepares them once, nothing is downloaded):
  python train.py --config=configs/finetune_classify.py --workdir=/tmp/finetune \
      --config.init_from=/path/to/coca_checkpoint --config.classify.manual_dir=DIR
On the embedded dataset instead:
  ... --config.data.train.name=coca_shapes --config.data.eval.name=coca_shapes \
      --config.data.eval.split=validation --config.global_batch_size=64
Head: --config.classify.features=embedding|encoder_mean|attentive, --config.classify.hidden_dim=N.
"""
from coca_jax.train.config import base_config


def get_config():
  config = base_config()
  config.task = "classify"
  config.model = "init_from"  # the checkpoint's model config
  config.classify = dict(label="label", features="embedding", hidden_dim=0, head_dropout=0.0,
                         label_smoothing=0.1, freeze=(), manual_dir="", cache_features=False)
  config.data.update(dict(train=dict(name="imagenet2012", split="train"),
                          eval=dict(name="imagenet2012", split="validation"),
                          image_size=0, text_length=0, crop="random_resized_crop",
                          crop_scale=(0.08, 1.0), normalization="openai_clip"))
  config.num_train_steps = 50_000
  config.global_batch_size = 512
  config.optimizer.update(dict(name="adamw", learning_rate=5e-4, warmup_fraction=0.05,
                               decay="cosine", b1=0.9, b2=0.999, weight_decay=0.05,
                               grad_clip_norm=1.0, layer_decay=0.75))
  config.checkpoint.every_steps = 2000
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.evals.batch_size = 512
  return config
