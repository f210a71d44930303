"""One training step: losses, gradients (optionally accumulated over micro-batches without
shrinking the contrastive loss's negatives), the optimizer update, and non-finite protection.

A batch is {"images": f32 (B, S, S, 3), "text": i32 (B, L)} and, when the datasets weigh
their examples in the caption loss (a spec's `caption_weight`), "caption_weight": f32 (B,).
The state is a `state.TrainState` (trainable params, optimizer state, step, non-finite
counter): a step whose loss or gradient is NaN/Inf leaves params and optimizer state as they
were and is counted, so the host can stop with the step's number without a sync every step.

Frozen params (`coca_jax.train.freeze`) are not in the state: the step takes them as a third,
non-donated argument, so they get no gradient, no update and no optimizer state. With a
distillation weight, a fourth argument, `reference` (the starting model's full params, also not
donated), gives the embeddings the fine-tuned ones are pulled toward
(`losses.embedding_distillation`).
"""
from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from coca_jax.model.partitioning import constrain
from coca_jax.train import freeze, losses
from coca_jax.train.state import TrainState


def _apply(model, params, batch, rng):
  return model.apply({"params": params}, batch["images"], batch["text"],
                     rngs={"dropout": rng} if not model.deterministic else None)


def reference_embeddings(model, reference, batch):
  """The reference model's L2-normalised (image, text) embeddings of a batch, each (B, D),
  without dropout."""
  model = model.clone(deterministic=True)
  image = model.apply({"params": reference}, batch["images"], method="encode_image")[0]
  text = model.apply({"params": reference}, batch["text"], method="encode_text")[0]
  return image, text


def _distill_weight(weights) -> float:
  """The distillation weight of (contrastive, caption[, distillation]) loss weights."""
  return weights[2] if len(weights) > 2 else 0.0


def _with_distillation(parts, outputs, reference, weight):
  """Adds the distillation part (and its weighted share of the total) when there is a
  reference."""
  if reference is None:
    return parts
  distill = losses.embedding_distillation(outputs["image_embed"], outputs["text_embed"],
                                          *reference)
  return {**parts, "total": parts["total"] + weight * distill, "distill": distill}


def full_batch_grads(model, params, batch, rng, *, pad_id, weights, frozen=None,
                     reference=None):
  """Loss parts and gradients (of `params`, not of `frozen`) of the whole batch in one pass.
  weights: (contrastive, caption[, distillation]); `reference`: the params whose embeddings
  the distillation term pulls toward (None: no such term)."""
  ref = reference_embeddings(model, reference, batch) if reference is not None else None

  def loss_fn(p):
    p = freeze.merge(p, frozen)
    outputs = _apply(model, p, batch, rng)
    parts = losses.coca_loss(outputs, batch["text"], pad_id=pad_id,
                             contrastive_weight=weights[0], caption_weight=weights[1],
                             example_weights=batch.get("caption_weight"))
    parts = _with_distillation(parts, outputs, ref, _distill_weight(weights))
    return parts["total"], parts
  (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return parts, grads


def _split(batch, k):
  """(B, ...) -> (k, B/k, ...), micro-batch j holding examples j, j+k, ... so that each
  micro-batch keeps the batch's sharding over devices."""
  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def accumulated_grads(model, params, batch, rng, *, pad_id, weights, accum_steps, frozen=None,
                      reference=None):
  """The full-batch gradient, computed over `accum_steps` micro-batches (GradCache / BASIC).

  Summing per-micro-batch contrastive gradients would be wrong: each micro-batch would see
  only its own negatives. Instead: (1) embed every micro-batch without gradients; (2) take the
  full-batch contrastive loss and its gradient with respect to the embeddings and the
  temperature; (3) backpropagate each micro-batch through the surrogate
  <dL/d(embeddings), embeddings> + caption loss share, whose parameter gradient is exactly that
  micro-batch's share of the full-batch gradient.
  """
  k = accum_steps
  micro = _split(batch, k)
  rngs = jax.random.split(rng, k)
  w_con, w_cap = weights[:2]
  w_distill = _distill_weight(weights)

  def embed(args):
    mb, r = args
    out = _apply(model, freeze.merge(params, frozen), mb, r)
    return out["image_embed"], out["text_embed"], out["logit_scale"]

  image_embed, text_embed, scales = jax.lax.map(embed, (micro, rngs))
  # Back to the batch's own order and sharding (the inverse of _split): flattening (k, B/k, D)
  # directly would leave XLA no batch sharding to keep, and it would then build the (B, B)
  # contrastive logits whole on every device (16 GiB each at the paper's batch of 65,536).
  def unsplit(x):
    x = jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])
    return constrain(x, ("act_batch", "act_embed"))

  contrastive, embed_grads = jax.value_and_grad(losses.contrastive_loss, argnums=(0, 1, 2))(
      unsplit(image_embed), unsplit(text_embed), scales[0])
  grad_image, grad_text = _split((embed_grads[0], embed_grads[1]), k)
  grad_scale = embed_grads[2]
  n_labels = jnp.maximum(losses.caption_loss_count(batch["text"], pad_id,
                                                   batch.get("caption_weight")), 1.0)

  def micro_step(acc, args):
    mb, g_img, g_txt, r = args
    ref = reference_embeddings(model, reference, mb) if reference is not None else None

    def surrogate(p):
      out = _apply(model, freeze.merge(p, frozen), mb, r)
      con = ((out["image_embed"] * g_img).sum() + (out["text_embed"] * g_txt).sum()
             + grad_scale / k * out["logit_scale"])
      cap_sum, _ = losses.outputs_caption_loss_sum(out, mb["text"], pad_id,
                                                   mb.get("caption_weight"))
      total = w_con * con + w_cap * cap_sum / n_labels
      if ref is None:
        return total, (cap_sum, jnp.zeros((), jnp.float32))
      # Equal micro-batches: the batch's mean distance is the mean of theirs.
      distill = losses.embedding_distillation(out["image_embed"], out["text_embed"], *ref)
      return total + w_distill * distill / k, (cap_sum, distill)

    grads, aux = jax.grad(surrogate, has_aux=True)(params)
    return jax.tree.map(jnp.add, acc, grads), aux

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, (cap_sums, distills) = jax.lax.scan(micro_step, zeros,
                                             (micro, grad_image, grad_text, rngs))
  caption = cap_sums.sum() / n_labels
  parts = {"total": w_con * contrastive + w_cap * caption, "contrastive": contrastive,
           "caption": caption}
  if reference is not None:
    parts["distill"] = distills.mean()
    parts["total"] = parts["total"] + w_distill * parts["distill"]
  return parts, grads


def make_train_step(model, tx: optax.GradientTransformation, schedule: Callable, *,
                    pad_id: int, contrastive_weight: float = 1.0, caption_weight: float = 2.0,
                    distill_weight: float = 0.0, accum_steps: int = 1,
                    seed: int = 0, dataset_caption_weights_from_step: int = 0) -> Callable:
  """train_step(state, batch[, frozen[, reference]]) -> (state, metrics); jit it with donated
  state (`frozen`, the params kept out of the state, and `reference`, the params the
  distillation term pulls the embeddings toward, are not donated). With `distill_weight` > 0
  the step needs `reference` (ValueError otherwise) and its metrics add "loss/distill".
  Before step `dataset_caption_weights_from_step`, a batch's "caption_weight" is replaced by
  ones: the datasets' caption weights apply from that step on."""
  weights = (contrastive_weight, caption_weight, distill_weight)

  def train_step(state: TrainState, batch, frozen=None,
                 reference=None) -> Tuple[TrainState, Dict[str, jax.Array]]:
    if distill_weight and reference is None:
      raise ValueError("distill_weight > 0: the step needs the reference params")
    if not distill_weight:
      reference = None  # no term, no reference forward pass: the program of a plain step
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    if dataset_caption_weights_from_step and "caption_weight" in batch:
      weights_apply = state.step >= dataset_caption_weights_from_step
      batch = {**batch, "caption_weight": jnp.where(weights_apply, batch["caption_weight"], 1.0)}
    params = state.params
    if accum_steps > 1:
      parts, grads = accumulated_grads(model, params, batch, rng, pad_id=pad_id,
                                       weights=weights, accum_steps=accum_steps,
                                       frozen=frozen, reference=reference)
    else:
      parts, grads = full_batch_grads(model, params, batch, rng, pad_id=pad_id,
                                      weights=weights, frozen=frozen, reference=reference)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(parts["total"]) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads, tx, finite)
    scale = model.apply({"params": freeze.merge(params, frozen)}, method="get_logit_scale")
    metrics = {**{f"loss/{k}": v for k, v in parts.items()}, "grad_norm": grad_norm,
               "learning_rate": schedule(state.step), "logit_scale": scale,
               "finite": finite.astype(jnp.float32)}
    return new_state, metrics

  return train_step
