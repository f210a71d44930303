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

Caption-only fine-tuning trades away zero-shot classification (in the cascade layout the image
embedding reads the generative pooler that the caption loss trains). Variants that keep it
(`--config=configs/caption_finetune.py:VARIANT`; README "Caption fine-tuning that keeps
zero-shot" compares them):
  embedding_path  every param the embeddings read stays frozen; only the multimodal decoder
                  trains (zero-shot and retrieval exactly unchanged)
  distill         embedding distillation toward the starting model (loss.distill_weight; a
                  frozen copy of the starting params in memory, nothing more on disk)
  contrastive     the contrastive loss beside the caption loss (loss.contrastive_weight 1)
The run evaluates the starting params first (evals.at_start) and reports each figure before ->
after: zero-shot top-1 on a labelled set (evals.datasets.zeroshot: coca_shapes validation +
test; e.g. imagenet2012 for natural images), CIDEr, BLEU-4, and on coca_shapes the caption
attribute score and recall.
"""
from coca_jax.train.config import base_config


DISTILL_WEIGHT = 10.0  # measured: README "Caption fine-tuning that keeps zero-shot"
VARIANTS = ("", "embedding_path", "distill", "contrastive")


def get_config(variant=None):
  variant = variant or ""
  if variant not in VARIANTS:
    raise ValueError(f"configs/caption_finetune.py:{variant}: one of {VARIANTS[1:]} (or none)")
  config = base_config()
  config.model = "init_from"  # the checkpoint's model config
  config.freeze = ("contrastive_only",)
  config.loss.update(dict(contrastive_weight=0.0, caption_weight=1.0))
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
  # Before and after: zero-shot on a named labelled set (coca_shapes validation + test, 3,000
  # images; ImageNet: --config.evals.datasets.zeroshot=imagenet2012), CIDEr and attributes.
  config.evals.update(dict(zeroshot=True, val_loss=True, captions=True,
                           num_caption_examples=1000, at_start=True))
  config.evals.datasets.zeroshot = "coca_shapes:validation+test"
  if variant == "embedding_path":
    config.freeze = ("embedding_path",)
  elif variant == "distill":
    config.loss.distill_weight = DISTILL_WEIGHT
  elif variant == "contrastive":
    config.loss.contrastive_weight = 1.0
  return config

