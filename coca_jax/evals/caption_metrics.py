"""Corpus BLEU-1..4 and CIDEr-D of generated captions against references, defined as the COCO
caption evaluation (`pycocoevalcap`'s `Bleu` and `Cider` scorers) defines them, so the numbers
compare with published ones. Written here, without Java: captions are tokenized by
`tokenize` (lower case, punctuation dropped), close to the PTB tokenizer the COCO toolkit runs
first; the scorers themselves agree with pycocoevalcap on pre-tokenized text (tests).

Inputs: `references` is a list (one entry per image) of lists of strings, `hypotheses` a list of
one string per image. Strings are split on white space; call `tokenize` first on raw captions.
"""
import collections
import math
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

MAX_N = 4
CIDER_SIGMA = 6.0  # CIDEr-D's Gaussian length penalty width
CIDER_SCALE = 10.0
# Additive constants of the COCO BLEU (they keep an empty n-gram count from giving log 0).
_TINY, _SMALL = 1e-15, 1e-9

_PUNCTUATION = re.compile(r"[^\w\s']|_|(?<!\w)'|'(?!\w)")


def tokenize(caption: str) -> str:
  """Lower case, punctuation removed, single spaces: the form the scorers expect."""
  caption = caption.lower().replace("'s ", " 's ").replace("n't ", " n't ")
  return " ".join(_PUNCTUATION.sub(" ", caption).split())


def _ngrams(words: Sequence[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _all_ngrams(words: Sequence[str]) -> collections.Counter:
  counts = collections.Counter()
  for n in range(1, MAX_N + 1):
    counts.update(_ngrams(words, n))
  return counts


def _check(references, hypotheses):
  if len(references) != len(hypotheses):
    raise ValueError(f"{len(references)} reference lists for {len(hypotheses)} hypotheses")
  if any(len(refs) == 0 for refs in references):
    raise ValueError("every image needs at least one reference caption")


def bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> List[float]:
  """Corpus BLEU-1..4: clipped n-gram matches summed over the corpus, geometric mean up to n,
  brevity penalty from the reference length closest to each hypothesis (the shorter on a tie)."""
  _check(references, hypotheses)
  matched = np.zeros(MAX_N)
  guessed = np.zeros(MAX_N)
  hyp_len = ref_len = 0
  for refs, hyp in zip(references, hypotheses):
    words = hyp.split()
    ref_words = [r.split() for r in refs]
    hyp_len += len(words)
    ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
    for n in range(1, MAX_N + 1):
      best = collections.Counter()
      for r in ref_words:
        best |= _ngrams(r, n)  # per n-gram, its largest count in any one reference
      counts = _ngrams(words, n)
      matched[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
      guessed[n - 1] += max(len(words) - n + 1, 0)
  scores, product = [], 1.0
  for n in range(MAX_N):
    product *= (matched[n] + _TINY) / (guessed[n] + _SMALL)
    scores.append(product ** (1.0 / (n + 1)))
  ratio = (hyp_len + _TINY) / (ref_len + _SMALL)
  if ratio < 1:
    scores = [s * math.exp(1 - 1 / ratio) for s in scores]
  return [float(s) for s in scores]


def _tfidf(counts: collections.Counter, df: Dict, log_images: float
           ) -> Tuple[List[Dict], np.ndarray, int]:
  """Per n: {n-gram: tf * idf}, the vectors' norms, and the length CIDEr-D compares (the COCO
  code counts bigrams there, which is 1 less than the words; kept for equal scores)."""
  vectors = [dict() for _ in range(MAX_N)]
  norms = np.zeros(MAX_N)
  length = 0
  for gram, tf in counts.items():
    n = len(gram) - 1
    value = tf * (log_images - math.log(max(1.0, df.get(gram, 0.0))))
    vectors[n][gram] = value
    norms[n] += value * value
    if n == 1:
      length += tf
  return vectors, np.sqrt(norms), length


def cider_scores(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> np.ndarray:
  """CIDEr-D of each hypothesis (Vedantam et al. 2015, "CIDEr: Consensus-based Image
  Description Evaluation"; the "-D" variant as pycocoevalcap's `Cider` computes it).

  Per n = 1..4: cosine of the hypothesis' and each reference's TF-IDF n-gram vectors, the
  hypothesis' weights clipped at the reference's, times a Gaussian length penalty
  exp(-(l_hyp - l_ref)^2 / (2 * 6^2)); averaged over n and references, times 10. Document
  frequencies come from the references of this corpus, so a score depends on the whole corpus.

  Args:
    references: one list of pre-tokenized reference strings per image (at least one each).
    hypotheses: one pre-tokenized generated string per image.

  Returns:
    float64 (N,) scores in 0..10, N = len(hypotheses). Published CIDEr figures are these
    times 100 (CoCa's COCO CIDEr 143.6 is a mean of 1.436 here).

  Raises:
    ValueError: the two lists differ in length, or an image has no reference.
  """
  _check(references, hypotheses)
  ref_counts = [[_all_ngrams(r.split()) for r in refs] for refs in references]
  df = collections.Counter()
  for counts in ref_counts:
    df.update(set().union(*counts))
  log_images = math.log(float(len(references)))
  scores = np.zeros(len(hypotheses))
  for i, (hyp, refs) in enumerate(zip(hypotheses, ref_counts)):
    h_vec, h_norm, h_len = _tfidf(_all_ngrams(hyp.split()), df, log_images)
    total = np.zeros(MAX_N)
    for ref in refs:
      r_vec, r_norm, r_len = _tfidf(ref, df, log_images)
      penalty = math.exp(-((h_len - r_len) ** 2) / (2 * CIDER_SIGMA ** 2))
      for n in range(MAX_N):
        # Clipped: a hypothesis gains nothing by repeating an n-gram beyond the reference.
        dot = sum(min(v, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0)
                  for g, v in h_vec[n].items())
        if h_norm[n] and r_norm[n]:
          dot /= h_norm[n] * r_norm[n]
        total[n] += dot * penalty
    scores[i] = total.mean() / len(refs) * CIDER_SCALE
  return scores


def cider(references: Sequence[Sequence[str]], hypotheses: Sequence[str]) -> float:
  """Corpus CIDEr-D: the mean of the per-image scores."""
  return float(np.mean(cider_scores(references, hypotheses)))


def caption_metrics(references: Sequence[Sequence[str]], hypotheses: Sequence[str],
                    prefix: str = "captions") -> Dict[str, float]:
  """CIDEr and BLEU-1..4 of raw captions (tokenized here)."""
  refs = [[tokenize(r) for r in rs] for rs in references]
  hyps = [tokenize(h) for h in hypotheses]
  b = bleu(refs, hyps)
  return {f"{prefix}/cider": cider(refs, hyps), f"{prefix}/bleu4": b[3],
          f"{prefix}/bleu1": b[0]}
