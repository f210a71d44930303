"""Reference-free caption scores from the model's own towers, and their agreement with people.

  CLIP-S     w * max(cos(E_image, E_caption), 0), w = 2.5, the caption prefixed with "A photo
             depicts" (Hessel et al. 2021, "CLIPScore", Sec. 3; the prefix is an option)
  RefCLIP-S  the harmonic mean of CLIP-S and max(max_r cos(E_caption, E_reference_r), 0)
             (ibid., Sec. 3; the references embedded without the prefix)
  log-likelihood  the decoder's mean log-probability per caption token given the image (the
             tokens after the start token, up to and including the end token)

Given human ratings (JSON lines or CSV with `image`, `caption`, `rating`), `agreement` gives
Pearson's r and Kendall's tau-b (ties corrected, as scipy's `kendalltau`) of each score with
them:

  python -m coca_jax.evals.caption_scores --config=configs/tiny.py --checkpoint=DIR \\
      --ratings=ratings.jsonl --output=DIR  [--images_root=DIR] [--no_prefix]
"""
import csv
import json
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from coca_jax.parallel import sharding
from coca_jax.evals import common, zero_shot

CLIP_S_WEIGHT = 2.5
PREFIX = "A photo depicts"
SCORES = ("clip_s", "ref_clip_s", "log_likelihood")


def clip_s(image_embeds: np.ndarray, caption_embeds: np.ndarray,
           weight: float = CLIP_S_WEIGHT) -> np.ndarray:
  """float (N,) from L2-normalised (N, D) image and caption embeddings."""
  return weight * np.maximum(np.sum(image_embeds * caption_embeds, axis=-1), 0.0)


def ref_clip_s(clip_scores: np.ndarray, caption_embeds: np.ndarray,
               reference_embeds: np.ndarray, reference_owner: np.ndarray) -> np.ndarray:
  """float (N,): the harmonic mean of CLIP-S (N,) and each caption's best reference cosine,
  clipped at 0; references (R, D) normalised, reference_owner (R,) int the caption each belongs
  to. A caption without references, or with a 0 term, scores 0 (the harmonic mean's limit)."""
  best = np.zeros(len(caption_embeds))
  if len(reference_embeds):
    cos = np.sum(caption_embeds[reference_owner] * reference_embeds, axis=-1)
    np.maximum.at(best, reference_owner, np.maximum(cos, 0.0))
  total = clip_scores + best
  return np.where(total > 0, 2 * clip_scores * best / np.where(total > 0, total, 1), 0.0)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
  """Pearson's correlation coefficient r of two (N,) sequences of numbers (computed in
  float64): cov(x, y) / (std(x) std(y)), a Python float in -1..1; nan when one is constant."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  dx, dy = x - x.mean(), y - y.mean()
  denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
  return float((dx * dy).sum() / denominator) if denominator > 0 else float("nan")


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
  """Kendall's tau-b (Kendall 1945; the variant scipy.stats.kendalltau computes by default) of
  two (N,) sequences of numbers (compared as float64): (concordant - discordant) /
  sqrt((n0 - ties_x) (n0 - ties_y)) over all n0 = N (N - 1) / 2 pairs, pairs tied in x (or y)
  counted in ties_x (ties_y). A Python float in -1..1; nan when one is constant. O(N^2) time.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  concordance = ties_x = ties_y = pairs = 0
  for i in range(len(x) - 1):  # O(N^2) in rows of pairs: ratings files are thousands long
    sx, sy = np.sign(x[i + 1:] - x[i]), np.sign(y[i + 1:] - y[i])
    concordance += int((sx * sy).sum())
    ties_x += int((sx == 0).sum())
    ties_y += int((sy == 0).sum())
    pairs += len(sx)
  denominator = np.sqrt(float(pairs - ties_x) * float(pairs - ties_y))
  return concordance / denominator if denominator > 0 else float("nan")


def agreement(scores: Dict[str, Sequence[float]], ratings: Sequence[float]
              ) -> Dict[str, Dict[str, float]]:
  """{score name: {"pearson": r, "kendall_tau_b": tau}} of each score with the ratings.

  Args:
    scores: {name: (N,) floats}, e.g. "clip_s", "log_likelihood", one value per rated caption.
    ratings: (N,) floats, the human ratings of the same captions in the same order.
  """
  return {name: {"pearson": pearson(values, ratings),
                 "kendall_tau_b": kendall_tau_b(values, ratings)}
          for name, values in scores.items()}


def read_ratings(path: str) -> List[Dict]:
  """Rows {"image": str, "caption": str, "rating": float} of a .jsonl or .csv file.

  Raises ValueError naming the line that lacks a field or has a rating that is not a number.
  """
  from coca_jax.data import formats  # pylint: disable=import-outside-toplevel
  with formats.open_text(path) as f:
    if path.endswith(".csv"):
      rows = list(csv.DictReader(f))
    else:
      rows = [json.loads(line) for line in f if line.strip()]
  out = []
  for n, row in enumerate(rows, 1):
    try:
      out.append({"image": str(row["image"]), "caption": str(row["caption"]),
                  "rating": float(row["rating"])})
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: row {n} needs image, caption and a numeric rating ({e})") from e
  return out


class CaptionScorer:
  """CLIP-S, RefCLIP-S and log-likelihood of captions of a global batch of images."""

  def __init__(self, model, mesh, tokenizer, text_length: int, prefix: Optional[str] = PREFIX):
    self.model, self.mesh, self.tokenizer = model, mesh, tokenizer
    self.text_length, self.prefix = text_length, prefix
    self._images = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
    self._likelihood = jax.jit(self._mean_log_prob)

  def _mean_log_prob(self, params, image_tokens, tokens):
    """(B,) mean log p(token_t | tokens_<t, image) over t = 1 .. the end token."""
    logits = self.model.apply({"params": params}, tokens[:, :-1], image_tokens,
                              method="decode").astype(jnp.float32)
    log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None],
                                    axis=-1)[..., 0]
    text = self.model.cfg.text
    ended = jnp.cumsum(tokens[:, 1:] == text.eos_id, axis=1) - (tokens[:, 1:] == text.eos_id)
    mask = (ended == 0) & (tokens[:, 1:] != text.pad_id)
    return (log_probs * mask).sum(1) / jnp.maximum(mask.sum(1), 1)

  def score(self, params, images, captions: Sequence[str],
            references: Optional[Sequence[Sequence[str]]] = None) -> Dict[str, np.ndarray]:
    """images: a global (B, H, W, 3) array (normalised, sharded over the mesh's batch axes);
    captions: B strings, the same on every process; references: B lists (RefCLIP-S when any
    is given). Returns {name: float (B,)} on every process."""
    image_embeds, image_tokens = self._images(params, images)
    tokens = self.tokenizer.encode(list(captions), self.text_length)
    global_tokens = jax.make_array_from_callback(
        tokens.shape, sharding.batch_sharding(self.mesh, 2), lambda index: tokens[index])
    host = common.gather({"embed": image_embeds,
                          "likelihood": self._likelihood(params, image_tokens, global_tokens)},
                         self.mesh)
    encode = lambda rows: zero_shot.encode_texts(  # noqa: E731
        self.model, params, rows, len(captions), self.mesh)
    caption_embeds = encode(self.tokenizer.encode(
        [f"{self.prefix} {c}" for c in captions], self.text_length) if self.prefix else tokens)
    out = {"clip_s": clip_s(host["embed"], caption_embeds),
           "log_likelihood": np.asarray(host["likelihood"], np.float64)}
    if references is not None and any(references):
      owner = np.asarray([i for i, refs in enumerate(references) for _ in refs], np.int64)
      flat = [r for refs in references for r in refs]
      plain = encode(tokens) if self.prefix else caption_embeds
      out["ref_clip_s"] = ref_clip_s(out["clip_s"], plain,
                                     encode(self.tokenizer.encode(flat, self.text_length)), owner)
    return out


def main(argv):
  """Scores every rated caption and prints the agreement of each score with the ratings."""
  del argv
  # pylint: disable=import-outside-toplevel
  import os
  from absl import flags
  from etils import epath
  from coca_jax.data import preprocess, records
  from coca_jax.evals import saved_model
  # pylint: enable=import-outside-toplevel
  f = flags.FLAGS
  if jax.process_count() != 1:
    raise ValueError("caption_scores runs in one process")
  saved = saved_model.load(f.config, f.checkpoint)
  config, mesh, tokenizer = saved.config, saved.mesh, saved.tokenizer
  model, params = saved.model, saved.params
  rows = read_ratings(f.ratings)
  root = f.images_root or os.path.dirname(os.path.abspath(f.ratings))
  size = model.cfg.vision.image_size
  mean, std = preprocess.mean_std(config.data.normalization if config.data.get("mean") is None
                                  else {"mean": config.data.mean, "std": config.data.std})
  scorer = CaptionScorer(model, mesh, tokenizer, config.data.text_length,
                         None if f.no_prefix else PREFIX)
  unit = common.batch_unit(mesh)
  scores: Dict[str, List[float]] = {name: [] for name in ("clip_s", "log_likelihood")}
  for start in range(0, len(rows), unit):
    chunk = rows[start:start + unit]
    pad = unit - len(chunk)
    pixels = []
    for row in chunk + chunk[:1] * pad:
      path = row["image"] if os.path.isabs(row["image"]) else os.path.join(root, row["image"])
      image = preprocess.preprocess_image(records.open_image(epath.Path(path).read_bytes()),
                                          size, None)
      pixels.append(preprocess.normalize(image, mean, std))
    images = sharding.global_batch(np.stack(pixels), mesh)
    got = scorer.score(params, images, [r["caption"] for r in chunk + chunk[:1] * pad])
    for name in scores:
      scores[name] += list(got[name][:len(chunk)])
  result = {"rows": len(rows),
            "agreement": agreement(scores, [r["rating"] for r in rows])}
  if f.output:
    out = epath.Path(f.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "agreement.json").write_text(json.dumps(result, indent=2))
    with (out / "scores.jsonl").open("w") as file:
      for i, row in enumerate(rows):
        file.write(json.dumps({**row, **{k: float(v[i]) for k, v in scores.items()}}) + "\n")
  print(json.dumps(result, indent=2))


def _define_flags():
  # pylint: disable=import-outside-toplevel
  from absl import flags
  from ml_collections import config_flags
  # pylint: enable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Config file (data fields, mesh).",
                                  lock_config=False)
  flags.DEFINE_string("checkpoint", None, "Workdir, checkpoint step, export or converted model.")
  flags.DEFINE_string("ratings", None, "JSON lines or CSV: image, caption, rating.")
  flags.DEFINE_string("images_root", None, "Relative image paths start here (default: the "
                      "ratings file's folder).")
  flags.DEFINE_bool("no_prefix", False, "CLIP-S without the 'A photo depicts' prefix.")
  flags.DEFINE_string("output", None, "Directory for agreement.json and scores.jsonl.")
  flags.mark_flags_as_required(["config", "checkpoint", "ratings"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
