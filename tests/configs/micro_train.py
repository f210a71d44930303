"""A training config small enough for subprocess tests on a 2-core CPU."""
from coca_jax.train.config import base_config


def get_config():
  config = base_config()
  config.model = dict(
      vision=dict(image_size=16, patch_size=4, width=32, depth=1, num_heads=2, mlp_dim=64),
      pooler=dict(layout="cascade", num_queries=4, num_heads=2),
      text=dict(vocab_size=1000, context_length=16, width=32, depth=1, num_heads=2,
                mlp_dim=64, pad_id=0, eos_id=3),
      decoder=dict(depth=1, num_heads=2, mlp_dim=64),
      embed_dim=32,
  )
  config.data.update(dict(train=dict(name="coca_shapes", split="train"),
                     eval=dict(name="coca_shapes", split="validation"),
                     tokenizer="embedded", image_size=16, text_length=16, num_threads=1,
                     prefetch=16))
  config.num_train_steps = 6
  config.global_batch_size = 16
  config.optimizer.warmup_steps = 2
  config.checkpoint.every_steps = 2
  config.checkpoint.max_to_keep = 5
  config.log_every_steps = 1
  config.eval_every_steps = 0
  config.evals = dict(zeroshot=False, val_loss=False, captions=False, batch_size=200,
                      num_caption_examples=16, max_caption_length=0, gallery=0)
  return config
