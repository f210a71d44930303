"""Validation losses (contrastive, caption, total) over an eval iterator."""
from typing import Dict

import jax
import jax.numpy as jnp

from coca_jax.train import losses
from coca_jax.parallel import sharding


class ValidationLossEvaluator:
  """Losses of the whole eval split. The contrastive loss is averaged over eval batches (its
  value depends on the batch size: each batch is one set of negatives)."""

  def __init__(self, model, mesh, eval_iter, *, pad_id: int, contrastive_weight: float,
               caption_weight: float, prefix: str = "val"):
    self.mesh, self.eval_iter, self.prefix = mesh, eval_iter, prefix

    def batch_losses(params, images, text, mask):
      out = model.apply({"params": params}, images, text)
      # Padded examples drop out of both losses: their text is all padding (no caption
      # targets) and the contrastive loss leaves them out (example_mask).
      con = losses.contrastive_loss(out["image_embed"], out["text_embed"], out["logit_scale"],
                                    example_mask=mask)
      # (chunk by chunk when the model has caption_loss_chunks: no whole logits)
      cap_sum, cap_count = losses.outputs_caption_loss_sum(
          out, text, pad_id, example_weights=mask.astype(jnp.float32))
      return con, cap_sum, cap_count

    self._losses = jax.jit(batch_losses)
    self._weights = (contrastive_weight, caption_weight)

  def run(self, params) -> Dict[str, float]:
    """{prefix}/contrastive: symmetric InfoNCE, the mean over eval batches; {prefix}/caption:
    next-token cross-entropy in nats per non-padding token over the whole split;
    {prefix}/total: contrastive_weight * contrastive + caption_weight * caption."""
    con_total = cap_sum = cap_count = 0.0
    batches = 0
    for batch in self.eval_iter:
      g = sharding.global_batch({k: batch[k] for k in ("images", "text", "mask")}, self.mesh)
      con, s, c = self._losses(params, g["images"], g["text"], g["mask"])
      con_total, cap_sum, cap_count = con_total + con, cap_sum + s, cap_count + c
      batches += 1
    con_total, cap_sum, cap_count = (
        float(sharding.to_host(x))
        for x in (con_total, cap_sum, cap_count))
    con = con_total / max(batches, 1)
    cap = cap_sum / max(cap_count, 1.0)
    return {f"{self.prefix}/contrastive": con, f"{self.prefix}/caption": cap,
            f"{self.prefix}/total": self._weights[0] * con + self._weights[1] * cap}
