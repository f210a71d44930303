"""CoCa's losses: contrastive (symmetric InfoNCE over the global batch) and captioning.

Both take global arrays: under jit with a batch sharded over devices, `image @ text.T` already
contrasts every image with every text of the global batch (XLA inserts the gathers), so no
per-device loss or manual all-gather is needed.
"""
from typing import Dict

import jax
import jax.numpy as jnp
import optax

from coca_jax.model.linear import linear


def contrastive_loss(image_embed, text_embed, logit_scale, example_mask=None):
  """The contrastive loss of CoCa (paper section 3.1; open_clip's ClipLoss): the mean of the
  image->text and text->image softmax cross-entropies over the batch, pair i being the
  positive of row i. image_embed, text_embed: (B, D) L2-normalised, any float dtype (computed
  in float32); logit_scale: () float32, the temperature's inverse (exp of the learned log);
  example_mask: optional (B,) bool, False for padded examples (evaluation's last batch),
  which then are neither anchors nor negatives and the mean is over the real ones.
  Returns () float32."""
  logits = logit_scale * (image_embed.astype(jnp.float32) @ text_embed.astype(jnp.float32).T)
  labels = jnp.arange(logits.shape[0])
  if example_mask is not None:  # a large negative bias, not -inf: a padded row stays finite
    logits = jnp.where(example_mask[:, None] & example_mask[None, :], logits, -1e9)
  image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  if example_mask is None:
    return (image_to_text.mean() + text_to_image.mean()) / 2
  per_example = (image_to_text + text_to_image) / 2 * example_mask
  return per_example.sum() / jnp.maximum(example_mask.sum(), 1)


@jax.custom_vjp
def token_cross_entropy(logits, labels):
  """Softmax cross-entropy per position, float32, from logits in any float dtype.

  The vocabulary logits are the largest activation of the model ((batch, length, vocab)):
  this keeps them in their own dtype and works in float32 only inside fused reductions
  (log-sum-exp), so no float32 copy is materialised. The backward pass saves the logits and
  the float32 log-sum-exp and returns the gradient in the logits' dtype. For float32 logits it
  computes what optax.softmax_cross_entropy_with_integer_labels does.
  """
  return _cross_entropy(logits, labels)[0]


def _cross_entropy(logits, labels):
  x = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(x, axis=-1)
  label_logit = jnp.take_along_axis(x, labels[..., None], axis=-1)[..., 0]
  return lse - label_logit, lse


def _cross_entropy_fwd(logits, labels):
  loss, lse = _cross_entropy(logits, labels)
  return loss, (logits, labels, lse)


def _cross_entropy_bwd(residuals, g):
  logits, labels, lse = residuals
  probs = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  grad = ((probs - onehot) * g[..., None]).astype(logits.dtype)
  return grad, None


token_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def _token_weights(labels, pad_id: int, example_weights=None):
  """float32 (B, L): 1 for labels that are not padding, times each example's weight."""
  weights = (labels != pad_id).astype(jnp.float32)
  if example_weights is not None:
    weights = weights * example_weights.astype(jnp.float32)[:, None]
  return weights


def caption_loss_sum(logits, labels, pad_id: int, example_weights=None):
  """(sum of next-token cross-entropies over non-padding labels, number of such labels).
  example_weights: optional float (B,) weights of each example's tokens in both (the caption
  loss is then a weighted mean over tokens)."""
  weights = _token_weights(labels, pad_id, example_weights)
  losses = token_cross_entropy(logits, labels)
  return (losses * weights).sum(), weights.sum()


def caption_loss_count(text, pad_id: int, example_weights=None):
  """The caption loss's denominator for input text (B, L): its labels text[:, 1:] that are not
  padding, each counted with its example's weight (float32 scalar)."""
  if example_weights is None:  # (the unweighted program as it always was)
    return (text[:, 1:] != pad_id).sum().astype(jnp.float32)
  return _token_weights(text[:, 1:], pad_id, example_weights).sum()


def chunked_caption_loss_sum(state_chunks, proj, labels, pad_id: int, example_weights=None):
  """`caption_loss_sum` from the decoder's final states in sequence chunks (chunks, B, C, W)
  float and the vocabulary projection (W, vocab) float: each chunk's logits are made, scored
  and dropped, and made again in the backward pass (jax.checkpoint), so only one chunk's
  logits are ever alive. labels (B, L) int32, L <= chunks * C (the rest counts as padding);
  example_weights (B,) float32 as in `caption_loss_sum`. Returns (sum, weight total), each ()
  float32."""
  chunks, _, size, _ = state_chunks.shape
  labels = jnp.pad(labels, ((0, 0), (0, chunks * size - labels.shape[1])),
                   constant_values=pad_id)
  weights = _token_weights(labels, pad_id, example_weights)
  labels = labels.reshape(labels.shape[0], chunks, size).swapaxes(0, 1)
  weights = weights.reshape(weights.shape[0], chunks, size).swapaxes(0, 1)

  @jax.checkpoint
  def chunk_loss(states, chunk_labels, chunk_weights):
    return (token_cross_entropy(linear(states, proj), chunk_labels) * chunk_weights).sum()

  def body(total, xs):
    return total + chunk_loss(*xs), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (state_chunks, labels, weights))
  return total, weights.sum()


def caption_loss(logits, labels, pad_id: int):
  """Token-level mean next-token cross-entropy over the labels that are not padding (paper
  section 3.1). logits (B, T, vocab) float, already aligned with labels (B, T) int32. Returns ()
  float32."""
  total, count = caption_loss_sum(logits, labels, pad_id)
  return total / jnp.maximum(count, 1.0)


def outputs_caption_loss_sum(outputs, text, pad_id: int, example_weights=None):
  """`caption_loss_sum` of the model's output dict against its input text: from whole logits,
  or chunk by chunk when the model was built with `caption_loss_chunks`. The logits (B, L - 1,
  vocab) at position i are scored against text[:, i + 1], as open_clip does (the model does
  not decode the last input position). text (B, L) int32; example_weights (B,) float32 or
  None. Returns (sum, weight total), each () float32. Raises ValueError when the logits do not
  have L - 1 positions."""
  labels = text[:, 1:]
  if "caption_state_chunks" in outputs:  # the model's caption_loss_chunks: logits made here
    return chunked_caption_loss_sum(outputs["caption_state_chunks"], outputs["caption_proj"],
                                    labels, pad_id, example_weights)
  if outputs["logits"].shape[:2] != labels.shape:
    raise ValueError(f"logits of shape {tuple(outputs['logits'].shape)} for text of shape "
                     f"{tuple(text.shape)}: expected (batch, length - 1, vocab), the "
                     "positions that have a next token (CoCa.__call__ gives these)")
  return caption_loss_sum(outputs["logits"], labels, pad_id, example_weights)


def coca_loss(outputs, text, *, pad_id: int, contrastive_weight: float = 1.0,
              caption_weight: float = 2.0, example_weights=None) -> Dict[str, jnp.ndarray]:
  """Total = contrastive_weight * L_con + caption_weight * L_cap, with both parts returned.

  `outputs` is the model's output dict; logits at position i are scored against text[i+1]
  (the last position has no target), as open_clip does. `example_weights` (float (B,),
  optional): each example's weight in the caption loss, then a weighted mean over tokens (a
  dataset's `caption_weight`; 0 keeps an example out of it).
  """
  con = contrastive_loss(outputs["image_embed"], outputs["text_embed"], outputs["logit_scale"])
  total, count = outputs_caption_loss_sum(outputs, text, pad_id, example_weights)
  cap = total / jnp.maximum(count, 1.0)
  return {"total": contrastive_weight * con + caption_weight * cap,
          "contrastive": con, "caption": cap}


def embedding_distillation(image_embed, text_embed, reference_image_embed,
                           reference_text_embed):
  """Mean cosine distance of the embeddings to a reference model's, image and text averaged:
  (mean_b (1 - cos(image_b, ref_image_b)) + mean_b (1 - cos(text_b, ref_text_b))) / 2, float32.

  All four are L2-normalised (B, D) arrays (cos is their dot product); the references carry no
  gradient. With the starting model as reference, this keeps a fine-tune's embeddings (and so
  its zero-shot classifier) where they were while the other losses train (feature
  distillation toward the pre-trained model, as in Li and Hoiem's Learning without
  Forgetting, 2017, on features rather than outputs). 0 when they are equal, at most 2.
  """
  def distance(x, ref):
    ref = jax.lax.stop_gradient(ref.astype(jnp.float32))
    return (1.0 - (x.astype(jnp.float32) * ref).sum(-1)).mean()
  return (distance(image_embed, reference_image_embed)
          + distance(text_embed, reference_text_embed)) / 2
