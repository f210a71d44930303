"""Zero-shot classification: class-prompt embeddings averaged over templates, then the
nearest class by cosine similarity (CLIP's protocol)."""
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from coca_jax import sharding


def classifier_weights(model, params, tokenizer, class_names: Sequence[str],
                       templates: Sequence[str], text_length: int, batch_size: int = 256):
  """(num_classes, embed_dim): each class's prompt embeddings averaged, then normalised."""
  prompts = [t.format(name) for name in class_names for t in templates]
  tokens = tokenizer.encode(prompts, text_length)
  encode = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text")[0])
  embeds = []
  for i in range(0, len(tokens), batch_size):
    chunk = tokens[i:i + batch_size]
    pad = batch_size - len(chunk)
    chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
    embeds.append(np.asarray(encode(params, jnp.asarray(chunk)))[:batch_size - pad])
  embeds = np.concatenate(embeds).reshape(len(class_names), len(templates), -1)
  mean = embeds.mean(axis=1)
  return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


class ZeroShotEvaluator:
  """Top-1 / top-5 accuracy of the zero-shot classifier over an eval iterator."""

  def __init__(self, model, mesh, eval_iter, tokenizer, class_names, templates,
               text_length: int, prefix: str = "zeroshot"):
    self.model, self.mesh, self.eval_iter = model, mesh, eval_iter
    self.tokenizer, self.class_names, self.templates = tokenizer, class_names, templates
    self.text_length, self.prefix = text_length, prefix

    def predict(params, weights, images, labels, mask):
      embed = model.apply({"params": params}, images, method="encode_image")[0]
      scores = embed @ weights.T
      top5 = jax.lax.top_k(scores, min(5, weights.shape[0]))[1]
      hit1 = (top5[:, 0] == labels) & mask
      hit5 = jnp.any(top5 == labels[:, None], axis=1) & mask
      return hit1.sum(), hit5.sum(), mask.sum()

    self._predict = jax.jit(predict)

  def run(self, params) -> Dict[str, float]:
    weights = jnp.asarray(classifier_weights(self.model, params, self.tokenizer,
                                             self.class_names, self.templates,
                                             self.text_length))
    hit1 = hit5 = count = 0
    for batch in self.eval_iter:
      g = sharding.global_batch({k: batch[k] for k in ("images", "label", "mask")}, self.mesh)
      h1, h5, n = self._predict(params, weights, g["images"], g["label"], g["mask"])
      hit1, hit5, count = hit1 + h1, hit5 + h5, count + n
    hit1, hit5, count = (float(sharding.to_host(x))
                         for x in (hit1, hit5, count))
    return {f"{self.prefix}/top1": hit1 / max(count, 1), f"{self.prefix}/top5": hit5 / max(count, 1),
            f"{self.prefix}/examples": count,
            f"{self.prefix}/chance": 1.0 / len(self.class_names)}
