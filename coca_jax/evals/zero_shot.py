"""Zero-shot classification: class-prompt embeddings averaged over templates, then the
nearest class by cosine similarity (CLIP's protocol); or, as an option, the class whose prompt
the captioning decoder finds most likely for the image (generative zero-shot)."""
import functools
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from coca_jax.parallel import sharding
from coca_jax.evals import common

GENERATIVE_TEMPLATE = "a photo of a {}."


@functools.lru_cache(maxsize=16)
def text_encoder(model, mesh=None):
  """jitted (params, int32 (N, L) tokens) -> float32 (N, embed_dim) normalised embeddings,
  replicated over `mesh` when one is given; one per (model, mesh), so that evaluators calling
  it again (every caption batch, every evaluation) reuse its compiled programs."""
  fn = lambda p, t: model.apply({"params": p}, t, method="encode_text")[0]  # noqa: E731
  return jax.jit(fn) if mesh is None else jax.jit(fn, out_shardings=common.replicated(mesh))


def encode_texts(model, params, tokens: np.ndarray, batch_size: int = 256, mesh=None,
                 progress: Optional[common.Progress] = None) -> np.ndarray:
  """Normalised text embeddings (N, embed_dim) of token rows (N, L), as NumPy on every
  process. With a mesh the rows of each batch are spread over its devices.

  Args:
    model, params: the CoCa module and its params (its `encode_text` is used).
    tokens: int32 (N, L) token rows (`tokenizer.encode`), the same on every process.
    batch_size: rows per step (with a mesh, rounded up by `common.fit_batch`); the last batch
      is padded with copies of its first row.
    mesh: spread each batch over its batch axes; None: one device.
    progress: advanced by the rows done.

  Returns:
    float32 (N, embed_dim) L2-normalised embeddings; (0, 0) when N is 0.
  """
  encode = text_encoder(model, mesh)
  batch = batch_size if mesh is None else common.fit_batch(batch_size, mesh, len(tokens))
  embeds = []
  for i in range(0, len(tokens), batch):
    chunk = tokens[i:i + batch]
    pad = batch - len(chunk)
    chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
    if mesh is None:
      rows = jnp.asarray(chunk)
    else:  # every process holds every row: each device takes its own
      rows = jax.make_array_from_callback(chunk.shape, sharding.batch_sharding(mesh, 2),
                                          lambda index, c=chunk: c[index])
    out = encode(params, rows)
    out = out.addressable_data(0) if mesh is not None else out
    embeds.append(np.asarray(out, np.float32)[:batch - pad])
    if progress is not None:
      progress.update(batch - pad)
  return np.concatenate(embeds) if embeds else np.zeros((0, 0), np.float32)


def classifier_weights(model, params, tokenizer, class_names: Sequence[str],
                       templates: Sequence[str], text_length: int, batch_size: int = 256,
                       mesh=None):
  """(num_classes, embed_dim): each class's prompt embeddings averaged, then normalised."""
  prompts = [t.format(name) for name in class_names for t in templates]
  tokens = tokenizer.encode(prompts, text_length)
  progress = common.Progress("zero-shot prompts", len(prompts), "prompts")
  embeds = encode_texts(model, params, tokens, batch_size, mesh, progress)
  mean = embeds.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def topk_hits(scores, labels, mask, k: int = 5):
  """(top-1 hits, top-k hits, examples) over the valid rows of scores (B, classes).

  Args:
    scores: float (B, C) class scores, higher is better.
    labels: int32 (B,) true class of each row.
    mask: bool (B,), False on padding rows (not counted).
    k: top-k (at most C).

  Returns:
    Three int32 () counts: rows whose best class is the label, rows with the label among the
    k best, and valid rows.
  """
  top = jax.lax.top_k(scores, min(k, scores.shape[-1]))[1]
  hit1 = (top[:, 0] == labels) & mask
  hitk = jnp.any(top == labels[:, None], axis=1) & mask
  return hit1.sum(), hitk.sum(), mask.sum()


class ZeroShotEvaluator:
  """Top-1 / top-5 accuracy of the zero-shot classifier over an eval iterator.

  generative=False: CLIP's classifier on the contrastive embeddings. generative=True: each
  class's prompt (`generative_template` filled with its name) is scored by its log-likelihood
  under the captioning decoder given the image; the most likely class wins. That costs one
  decoder pass per (image, class), run `class_chunk` classes at a time.
  """

  def __init__(self, model, mesh, eval_iter, tokenizer, class_names, templates,
               text_length: int, prefix: str = "zeroshot", *, generative: bool = False,
               generative_template: Optional[str] = None, class_chunk: int = 8,
               text_batch_size: int = 256):
    self.model, self.mesh, self.eval_iter = model, mesh, eval_iter
    self.tokenizer, self.class_names, self.templates = tokenizer, class_names, templates
    self.text_length, self.prefix = text_length, prefix
    self.generative, self.text_batch_size = generative, text_batch_size
    self.generative_template = generative_template or (
        GENERATIVE_TEMPLATE if GENERATIVE_TEMPLATE in templates else templates[0])
    pad_id = model.cfg.text.pad_id

    def predict(params, weights, images, labels, mask):
      embed = model.apply({"params": params}, images, method="encode_image")[0]
      return topk_hits(embed @ weights.T, labels, mask)

    def predict_generative(params, prompts, images, labels, mask):
      # The text tower does not see the image: the prompts' token states are computed once.
      _, image_tokens = model.apply({"params": params}, images, method="encode_image")
      _, states = model.apply({"params": params}, prompts, method="encode_text")
      targets, valid = prompts[:, 1:], prompts[:, 1:] != pad_id
      c = class_chunk
      num_classes = prompts.shape[0]
      padded = -(-num_classes // c) * c
      extend = lambda x: jnp.concatenate(  # noqa: E731
          [x, jnp.repeat(x[:1], padded - num_classes, 0)]) if padded > num_classes else x
      chunks = [extend(x).reshape((padded // c, c) + x.shape[1:])
                for x in (states, targets, valid)]
      b = images.shape[0]

      def score(chunk):
        s, t, v = chunk  # (c, L, W), (c, L-1), (c, L-1)
        rows = jnp.broadcast_to(s[None], (b,) + s.shape).reshape((b * c,) + s.shape[1:])
        image_rows = jnp.repeat(image_tokens, c, axis=0)
        logits = model.apply({"params": params}, rows, image_rows, method="decode_tokens")
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32))
        target_rows = jnp.tile(t, (b, 1))
        picked = jnp.take_along_axis(logp, target_rows[..., None], axis=-1)[..., 0]
        return (picked * jnp.tile(v, (b, 1))).sum(-1).reshape(b, c)

      scores = jax.lax.map(score, chunks)  # (chunks, B, c)
      scores = scores.transpose(1, 0, 2).reshape(b, padded)[:, :num_classes]
      return topk_hits(scores, labels, mask)

    self._predict = jax.jit(predict_generative if generative else predict)

  def _classifier(self, params):
    if self.generative:
      prompts = self.tokenizer.encode(
          [self.generative_template.format(n) for n in self.class_names], self.text_length)
      return jnp.asarray(prompts)
    return jnp.asarray(classifier_weights(
        self.model, params, self.tokenizer, self.class_names, self.templates, self.text_length,
        self.text_batch_size, self.mesh))

  def run(self, params) -> Dict[str, float]:
    """{prefix}/top1 and {prefix}/top5 (fractions 0..1 of the examples read),
    {prefix}/examples, {prefix}/chance (1 / classes) and, when some records could not be read,
    {prefix}/unreadable_examples."""
    classifier = self._classifier(params)
    hit1 = hit5 = count = 0
    progress = common.Progress(f"{self.prefix}: classifying",
                               getattr(self.eval_iter, "num_examples", 0))
    for batch in self.eval_iter:
      g = sharding.global_batch({k: batch[k] for k in ("images", "label", "mask")}, self.mesh)
      h1, h5, n = self._predict(params, classifier, g["images"], g["label"], g["mask"])
      hit1, hit5, count = hit1 + h1, hit5 + h5, count + n
      progress.update(int(np.sum(batch["mask"])) * jax.process_count())
    hit1, hit5, count = (float(sharding.to_host(x))
                         for x in (hit1, hit5, count))
    results = {f"{self.prefix}/top1": hit1 / max(count, 1),
               f"{self.prefix}/top5": hit5 / max(count, 1),
               f"{self.prefix}/examples": count,
               f"{self.prefix}/chance": 1.0 / len(self.class_names)}
    total = getattr(self.eval_iter, "num_examples", None)
    if total is not None and total > count:  # records that failed to read are left out
      results[f"{self.prefix}/unreadable_examples"] = float(total - count)
    return results
