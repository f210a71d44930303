"""CoCa's losses: contrastive (symmetric InfoNCE over the global batch) and captioning.

Both take global arrays: under jit with a batch sharded over devices, `image @ text.T` already
contrasts every image with every text of the global batch (XLA inserts the gathers), so no
per-device loss or manual all-gather is needed.
"""
from typing import Dict

import jax.numpy as jnp
import optax


def contrastive_loss(image_embed, text_embed, logit_scale):
  """Mean of image->text and text->image softmax cross-entropy; embeddings L2-normalised."""
  logits = logit_scale * (image_embed.astype(jnp.float32) @ text_embed.astype(jnp.float32).T)
  labels = jnp.arange(logits.shape[0])
  image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
  return (image_to_text + text_to_image) / 2


def caption_loss_sum(logits, labels, pad_id: int):
  """(sum of next-token cross-entropies over non-padding labels, number of such labels)."""
  weights = (labels != pad_id).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return (losses * weights).sum(), weights.sum()


def caption_loss(logits, labels, pad_id: int):
  """Token-level mean next-token cross-entropy over the labels that are not padding."""
  total, count = caption_loss_sum(logits, labels, pad_id)
  return total / jnp.maximum(count, 1.0)


def coca_loss(outputs, text, *, pad_id: int, contrastive_weight: float = 1.0,
              caption_weight: float = 2.0) -> Dict[str, jnp.ndarray]:
  """Total = contrastive_weight * L_con + caption_weight * L_cap, with both parts returned.

  `outputs` is the model's output dict; logits at position i are scored against text[i+1]
  (the last position has no target), as open_clip does.
  """
  con = contrastive_loss(outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"])
  cap = caption_loss(outputs["logits"][:, :-1], text[:, 1:], pad_id)
  return {"total": contrastive_weight * con + caption_weight * cap,
          "contrastive": con, "caption": cap}
