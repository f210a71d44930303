"""A small CoCa on your own files: image-caption pairs (CSV) mixed half and half with a folder of
class sub-folders (captions from prompt templates), as the README's "Train on your own data".

  python train.py --config=configs/own_data.py --workdir=$WORK/run \
      --config.data.train.pairs.path=$DATA/train.csv \
      --config.data.train.classes.path=$DATA/classes \
      --config.data.eval.path=$DATA/val.csv --config.data.tokenizer=$WORK/tokenizer.model

The paths left empty here must be given (from the command line as above, or in a copy of this
file). Sizes are the tiny config's; raise them with your data.
"""
from coca_jax.train.config import base_config


def get_config():
  config = base_config()
  config.model = dict(
      vision=dict(image_size=32, patch_size=4, width=64, depth=2, num_heads=2, mlp_dim=256),
      pooler=dict(layout="cascade", num_queries=16, num_heads=2),
      text=dict(vocab_size=1000, context_length=24, width=64, depth=2, num_heads=2,
                mlp_dim=256, pad_id=0, eos_id=3),
      decoder=dict(depth=2, num_heads=2, mlp_dim=256),
      embed_dim=64,
  )
  config.data.update(dict(
      train=dict(
          pairs=dict(name="pairs", format="csv", path="", weight=0.5),
          classes=dict(name="classes", format="folder", path="", templates="clip",
                       weight=0.5)),
      eval=dict(name="pairs", split="validation", format="csv", path=""),
      tokenizer="", image_size=32, text_length=24, crop="random_resized_crop"))
  config.num_train_steps = 2000
  config.global_batch_size = 64
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_fraction = 0.05
  config.loss.caption_weight = 1.0
  config.checkpoint.every_steps = 500
  config.log_every_steps = 100
  config.eval_every_steps = 0
  config.evals.update(zeroshot=False, val_loss=True, captions=True, batch_size=64,
                      num_caption_examples=64, gallery=8)
  return config
