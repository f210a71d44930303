"""Caption fine-tuning as in the paper's COCO captioning fine-tune: caption loss only
(contrastive weight 0), learning rate 1e-5, batch 128, 50k steps, gradient clipping 1.0,
cosine schedule. The params only the contrastive loss uses (text projection, contrastive pooler,
image projection, temperature, the text CLS embedding and final norm) stay exactly as loaded:
they are kept out of the optimized state (no update, no weight decay, no optimizer state).
Evaluated by CIDEr / BLEU-4 of greedy captions on the eval split.

  python train.py --config=configs/caption_finetune.py --workdir=/tmp/caption_ft \
      --config.init_from=/path/to/coca_checkpoint
COCO captions (TFDS coco_captions, prepared beforehand; nothing is downloaded):
  ... --config.data.train.name=coco_captions --config.data.train.text_key=captions/text \
      --config.data.eval.name=coco_captions --config.data.eval.split=val \
      --config.data.eval.text_key=captions/text
The model config comes from the checkpoint; any image-caption dataset works (config.data).
"""
from coca_jax.train_config import base_config


def get_config():
  config = base_config()
  config.model = "init_from"  # the checkpoint's model config
  config.freeze = ("contrastive_only",)
  config.loss = dict(contrastive_weight=0.0, caption_weight=1.0)
  config.data.update(dict(train=dict(name="coca_shapes", split="train"),
                          eval=dict(name="coca_shapes", split="validation"),
                          image_size=0, text_length=0, crop="random_resized_crop"))
  config.num_train_steps = 50_000
  config.global_batch_size = 128
  config.optimizer.update(dict(name="adafactor", learning_rate=1e-5, warmup_fraction=0.02,
                               decay="cosine", b1=0.9, b2=0.999, weight_decay=0.01,
                               grad_clip_norm=1.0))
  config.checkpoint.every_steps = 5000
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.evals.update(dict(zeroshot=False, val_loss=True, captions=True,
                           num_caption_examples=1000))
  return config
