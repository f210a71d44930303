"""Image-text retrieval: recall@K and mean average precision, image->text and text->image,
over every image of an eval split and every caption of those images.

Several captions per image are counted the standard way (as in CLIP / CoCa / ALIGN reports):
an image query is correct at K when ANY of its captions is among the top K texts; a text query
when its own image is among the top K images. Average precision uses every relevant item (all
of an image's captions; a text's single image, where it equals 1 / rank).

Images are counted once each (COCO's protocol): people's own files are grouped by image at
conversion, and a split whose images still repeat (same bytes) is warned about, with the count
reported as `retrieval/duplicate_images`.

Ties are ranked against the query: an irrelevant item scoring the same as a relevant one comes
first, so a model whose embeddings collapse to one point scores at chance, not perfectly.
"""
import collections
import hashlib
from typing import Dict, List, Optional, Sequence

from absl import logging
from etils import epath
import jax
import numpy as np

from coca_jax.parallel import sharding
from coca_jax.data import records
from coca_jax.evals import common, pictures, zero_shot

KS = (1, 5, 10)
PICTURE_FILE = "retrieval_examples.png"


def ranked_relevance(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
  """Relevance (Q, N) of each query's items in rank order (best first; on equal scores the
  irrelevant item first).

  Args:
    scores: float (Q, N) similarity of each query to each item.
    relevant: bool (Q, N), whether each item is relevant to each query.

  Returns:
    `relevant` (same dtype, bool here) with each row sorted by descending score.
  """
  order = np.lexsort((relevant, -scores), axis=-1)
  return np.take_along_axis(relevant, order, axis=-1)


def query_metrics(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = KS):
  """Per query: {"R@K": bool (Q,)} and "AP" (Q,), for queries with at least one relevant."""
  ranked = ranked_relevance(scores, relevant.astype(bool))
  out = {f"R@{k}": ranked[:, :k].any(axis=1) for k in ks}
  hits = np.cumsum(ranked, axis=1)
  precision = hits / np.arange(1, ranked.shape[1] + 1)
  out["AP"] = (precision * ranked).sum(axis=1) / np.maximum(ranked.sum(axis=1), 1)
  return out


def retrieval_metrics(image_embeds: np.ndarray, text_embeds: np.ndarray,
                      text_image: np.ndarray, ks: Sequence[int] = KS, chunk: int = 1024,
                      prefix: str = "retrieval") -> Dict[str, float]:
  """Recall@K and mAP both ways. `text_image[t]` is the image that text t describes; images
  without any text are left out of the image->text queries.

  Recall@K: the fraction of queries with at least one relevant item among the K best scored
  (an image's relevant items are all its texts, a text's is its one image). AP of a query: the
  mean, over its relevant items, of the precision at each one's rank; mAP: the mean AP over
  queries. Similarities are dot products, i.e. cosines of normalised embeddings.

  Args:
    image_embeds: float32 (I, D) L2-normalised image embeddings.
    text_embeds: float32 (T, D) L2-normalised text embeddings.
    text_image: int (T,) index into image_embeds of each text's image.
    ks: the K of recall@K.
    chunk: queries scored at once (bounds memory at chunk x max(I, T) floats).
    prefix: name prefix of the results.

  Returns:
    {"{prefix}/image_to_text/R@K", ".../mAP", "{prefix}/text_to_image/R@K", ".../mAP"}:
    fractions 0..1; "{prefix}/images" and "{prefix}/texts": the counts I and T.
  """
  text_image = np.asarray(text_image)
  num_images = len(image_embeds)
  sums: Dict[str, Dict[str, float]] = {"i2t": {}, "t2i": {}}
  queries = {"i2t": 0, "t2i": 0}
  with_text = np.bincount(text_image, minlength=num_images) > 0
  for start in range(0, num_images, chunk):
    ids = np.arange(start, min(start + chunk, num_images))
    ids = ids[with_text[ids]]
    if not len(ids):
      continue
    scores = image_embeds[ids] @ text_embeds.T
    m = query_metrics(scores, text_image[None, :] == ids[:, None], ks)
    _accumulate(sums["i2t"], m)
    queries["i2t"] += len(ids)
  for start in range(0, len(text_embeds), chunk):
    ids = np.arange(start, min(start + chunk, len(text_embeds)))
    scores = text_embeds[ids] @ image_embeds.T
    m = query_metrics(scores, np.arange(num_images)[None, :] == text_image[ids][:, None], ks)
    _accumulate(sums["t2i"], m)
    queries["t2i"] += len(ids)
  results = {}
  for direction, name in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
    for key, total in sums[direction].items():
      metric = "mAP" if key == "AP" else key
      results[f"{prefix}/{name}/{metric}"] = total / max(queries[direction], 1)
  results[f"{prefix}/images"] = float(num_images)
  results[f"{prefix}/texts"] = float(len(text_embeds))
  return results


def _digest(image) -> str:
  """The same picture gives the same digest (encoded bytes, or a decoded array's bytes)."""
  data = image.tobytes() if isinstance(image, np.ndarray) else bytes(image)
  return hashlib.sha1(data).hexdigest()


def _accumulate(sums, metrics):
  for key, values in metrics.items():
    sums[key] = sums.get(key, 0.0) + float(np.sum(values))


class RetrievalEvaluator:
  """Retrieval over an eval iterator's split: its images, and every caption of each (at most
  `captions_per_image` when set). `run_final` also draws the top images of a few text queries
  (`num_pictured` of them) into `workdir`/retrieval_examples.png."""
  final_only = False

  def __init__(self, model, mesh, eval_iter, tokenizer, text_length: int,
               prefix: str = "retrieval", *, captions_per_image: int = 0,
               text_batch_size: int = 256, num_pictured: int = 4):
    self.model, self.mesh, self.eval_iter, self.tokenizer = model, mesh, eval_iter, tokenizer
    self.text_length, self.prefix = text_length, prefix
    self.captions_per_image, self.text_batch_size = captions_per_image, text_batch_size
    self.num_pictured = num_pictured
    self._encode = jax.jit(
        lambda p, x: model.apply({"params": p}, x, method="encode_image")[0])
    self._texts: Optional[List[str]] = None
    self.duplicate_images = 0

  def _captions(self):
    """Every caption of the split and its image (read once; the same on every process)."""
    if self._texts is None:
      source = self.eval_iter.source
      texts, owners, digests = [], [], collections.Counter()
      for index in range(len(source)):
        try:
          record = source[index]
          captions = common.clean_captions(record["captions"])
          digests[_digest(record["image"])] += 1
        except Exception:  # pylint: disable=broad-except  (an unreadable record has none)
          captions = []
        if self.captions_per_image:
          captions = captions[:self.captions_per_image]
        texts += captions
        owners += [index] * len(captions)
      self._texts, self._owners = texts, np.asarray(owners, np.int64)
      # COCO's protocol counts images: a picture given as several examples (one row per
      # caption, or the same file twice) competes with itself and lowers text->image recall.
      self.duplicate_images = sum(n - 1 for n in digests.values())
      if self.duplicate_images:
        logging.warning("%s: %d of %d images repeat another image of the split (same bytes); "
                        "text->image recall counts each copy as a different image. Give each "
                        "picture once with all its captions.", self.prefix,
                        self.duplicate_images, len(source))
    return self._texts, self._owners

  def image_embeddings(self, params):
    """(num_examples, embed_dim) NumPy on every process, and which rows were readable."""
    it = self.eval_iter
    embeds, seen = None, np.zeros(it.num_examples, bool)
    progress = common.Progress(f"{self.prefix}: images", it.num_examples)
    for batch in it:
      g = sharding.global_batch({k: batch[k] for k in ("images", "index", "mask")}, self.mesh)
      host = common.gather({"embed": self._encode(params, g["images"]), "index": g["index"],
                            "mask": g["mask"]}, self.mesh)
      if embeds is None:
        embeds = np.zeros((it.num_examples, host["embed"].shape[-1]), np.float32)
      rows = host["index"][host["mask"]]
      embeds[rows] = host["embed"][host["mask"]]
      seen[rows] = True
      progress.update(int(host["mask"].sum()))
    return embeds, seen

  def run(self, params) -> Dict[str, float]:
    """`retrieval_metrics` of the split's images and captions (fractions 0..1) and
    `{prefix}/duplicate_images`, the count of images repeating another one's bytes."""
    results, _ = self._run(params)
    return results

  def _run(self, params):
    image_embeds, seen = self.image_embeddings(params)
    texts, owners = self._captions()
    keep = seen[owners]  # captions of unreadable images are left out with them
    texts = [t for t, k in zip(texts, keep) if k]
    owners = owners[keep]
    progress = common.Progress(f"{self.prefix}: texts", len(texts), "texts")
    text_embeds = zero_shot.encode_texts(
        self.model, params, self.tokenizer.encode(texts, self.text_length),
        self.text_batch_size, self.mesh, progress)
    # Unreadable images are dropped, and the text owners renumbered to match.
    renumber = np.cumsum(seen) - 1
    image_embeds = image_embeds[seen]
    results = retrieval_metrics(image_embeds, text_embeds, renumber[owners],
                                prefix=self.prefix)
    results[f"{self.prefix}/duplicate_images"] = float(self.duplicate_images)
    return results, (image_embeds, text_embeds, texts, np.flatnonzero(seen),
                     renumber[owners])

  def run_final(self, params, workdir=None, writer=None, step=None) -> Dict[str, float]:
    """The results of `run`; also draws the example picture into `workdir` and `writer`."""
    results, found = self._run(params)
    if self.num_pictured and (workdir is not None or writer is not None):
      picture = self.picture(*found)
      if common.main_process():
        if workdir is not None:
          epath.Path(workdir).mkdir(parents=True, exist_ok=True)
          pictures.save_png(epath.Path(workdir) / PICTURE_FILE, picture)
        if writer is not None:
          writer.write_images(step or 0, {f"{self.prefix}/examples": picture[None]})
    return results

  def picture(self, image_embeds, text_embeds, texts, image_ids, text_image, top: int = 5):
    """The top images of `num_pictured` text queries spread over the split."""
    if not texts:
      return pictures.retrieval_examples([], [], [])
    queries = np.unique(np.linspace(0, len(texts) - 1, self.num_pictured).astype(int))
    source = self.eval_iter.source
    rows, hits = [], []
    for q in queries:
      best = np.argsort(-(image_embeds @ text_embeds[q]), kind="stable")[:top]
      rows.append([records.open_image(source[int(image_ids[b])]["image"]) for b in best])
      hits.append([b == text_image[q] for b in best])
    return pictures.retrieval_examples([texts[q] for q in queries], rows, hits)
