"""Evaluation arithmetic on constructed cases with known answers: BLEU / CIDEr-D equal to the
COCO caption toolkit, retrieval recall and mAP computed by hand, zero-shot top-k."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from coca_jax.evals import caption_metrics as cm
from coca_jax.evals import retrieval
from coca_jax.evals.zero_shot import topk_hits

REFS = [
    ["a man riding a wave on top of a surfboard", "a surfer rides a large wave in the ocean",
     "a person on a surf board riding a wave"],
    ["two dogs playing with a frisbee in the grass", "a couple of dogs run across a grassy field",
     "dogs chasing a frisbee on a lawn", "two brown dogs play in a park"],
    ["a plate of food with broccoli and rice", "a white plate topped with rice and vegetables"],
    ["a red double decker bus driving down a street", "a bus on a city street",
     "a red bus is parked next to the sidewalk"],
    ["a cat sleeping on a laptop keyboard", "a cat lying on top of a computer"],
    ["a small red circle in the top left corner"],
]
HYPS = ["a man riding a wave on a surfboard", "two dogs playing in the grass",
        "a plate of rice and broccoli", "a bus on a street", "a cat", ""]
# Produced by pycocoevalcap 1.2 (pip install pycocoevalcap) on exactly REFS / HYPS:
#   Bleu(4).compute_score({i: refs}, {i: [hyp]})[0] and Cider().compute_score(...)
EXPECTED_BLEU = [0.49474950065980533, 0.45978079261259525, 0.3811479023299963,
                 0.3030021089976585]
EXPECTED_CIDER = 1.9481897329009465
EXPECTED_CIDER_PER_IMAGE = [3.3404753134129956, 1.549802418717119, 2.5605695560280965,
                            2.651188515920659, 1.5871025933268104, 0.0]


def test_bleu_and_cider_equal_recorded_coco_toolkit_values():
  np.testing.assert_allclose(cm.bleu(REFS, HYPS), EXPECTED_BLEU, rtol=1e-12)
  assert cm.cider(REFS, HYPS) == pytest.approx(EXPECTED_CIDER, rel=1e-12)
  np.testing.assert_allclose(cm.cider_scores(REFS, HYPS), EXPECTED_CIDER_PER_IMAGE, rtol=1e-12,
                             atol=1e-15)


def _random_corpus(seed, size=40):
  rng = np.random.default_rng(seed)
  words = ("a the red blue green circle square left of right above below big small in center "
           "corner top man dog").split()
  refs = [[" ".join(rng.choice(words, rng.integers(2, 14))) for _ in range(rng.integers(1, 6))]
          for _ in range(size)]
  hyps = [" ".join(rng.choice(words, rng.integers(0, 14))) for _ in range(size)]
  return refs, hyps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bleu_and_cider_equal_pycocoevalcap_live(seed):
  bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
  cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
  for refs, hyps in [(REFS, HYPS), _random_corpus(seed)]:
    gts, res = {i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}
    bleu, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_image = cider_mod.Cider().compute_score(gts, res)
    np.testing.assert_allclose(cm.bleu(refs, hyps), bleu, rtol=1e-12)
    assert cm.cider(refs, hyps) == pytest.approx(cider, rel=1e-12)
    np.testing.assert_allclose(cm.cider_scores(refs, hyps), per_image, rtol=1e-12, atol=1e-15)


def test_tokenize_drops_punctuation_and_case():
  assert cm.tokenize("A Man, riding a WAVE!  ") == "a man riding a wave"
  assert cm.tokenize("two-dogs... playing") == "two dogs playing"
  m = cm.caption_metrics([["A cat."]], ["a CAT"])
  assert m["captions/bleu1"] == pytest.approx(1.0)


def test_perfect_captions_score_bleu_one():
  refs = [["a red circle on the left side"], ["two blue squares above a green cross"]]
  hyps = [r[0] for r in refs]
  assert cm.bleu(refs, hyps)[3] == pytest.approx(1.0)


# --- retrieval: a hand-computed case ------------------------------------------------------
#
# Two images, four texts; texts 0, 1 describe image 0 and texts 2, 3 image 1. With image
# embeddings (1, 0) and (0, 1), text t's embedding (a, b) scores a against image 0, b against 1.
SCORES = np.array([[0.9, 0.1, 0.8, 0.3],     # image 0: t0 t2 t3 t1 -> relevant at ranks 1, 4
                   [0.2, 0.7, 0.6, 0.5]])    # image 1: t1 t2 t3 t0 -> relevant at ranks 2, 3
TEXT_IMAGE = np.array([0, 0, 1, 1])


def test_retrieval_recall_and_map_equal_hand_computed_values():
  r = retrieval.retrieval_metrics(np.eye(2), SCORES.T, TEXT_IMAGE, ks=(1, 2, 5), prefix="r")
  # image -> text: AP(image 0) = (1/1 + 2/4) / 2 = 3/4; AP(image 1) = (1/2 + 2/3) / 2 = 7/12.
  assert r["r/image_to_text/mAP"] == pytest.approx((3 / 4 + 7 / 12) / 2)  # = 2/3
  assert r["r/image_to_text/R@1"] == 0.5  # image 1's best text is image 0's
  assert r["r/image_to_text/R@2"] == 1.0 and r["r/image_to_text/R@5"] == 1.0
  # text -> image: own image at ranks 1, 2, 2, 1 -> AP 1, 1/2, 1/2, 1.
  assert r["r/text_to_image/mAP"] == pytest.approx(0.75)
  assert r["r/text_to_image/R@1"] == 0.5 and r["r/text_to_image/R@2"] == 1.0
  assert r["r/images"] == 2 and r["r/texts"] == 4


def test_retrieval_chunks_do_not_change_the_answer():
  rng = np.random.default_rng(0)
  images, texts = rng.normal(size=(23, 8)), rng.normal(size=(61, 8))
  owners = rng.integers(0, 23, 61)
  whole = retrieval.retrieval_metrics(images, texts, owners)
  chunked = retrieval.retrieval_metrics(images, texts, owners, chunk=5)
  assert whole == pytest.approx(chunked)


def test_an_image_is_found_when_any_of_its_captions_is_in_the_top_k():
  # Image 0 has three captions; only its third is among the top 1 -> still a hit at R@1.
  scores = np.array([[0.1, 0.2, 0.9, 0.5]])
  m = retrieval.query_metrics(scores, np.array([[True, True, True, False]]), ks=(1,))
  assert m["R@1"][0]
  # Precision at the relevant ranks 1, 3, 4 -> AP = (1 + 2/3 + 3/4) / 3.
  assert m["AP"][0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_collapsed_embeddings_score_chance_not_perfect():
  # Every score equal: the relevant item is ranked after every irrelevant one.
  n = 10
  r = retrieval.retrieval_metrics(np.ones((n, 4)), np.ones((n, 4)), np.arange(n), ks=(1, 5))
  assert r["retrieval/text_to_image/R@1"] == 0.0
  assert r["retrieval/image_to_text/mAP"] == pytest.approx(1 / n)


def test_zero_shot_topk_hits_on_a_constructed_case():
  scores = jnp.array([[0.9, 0.1, 0.0, 0.2, 0.3, 0.4, 0.5],   # label 0: top-1
                      [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1],   # label 4: top-5, not top-1
                      [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1],   # label 6: neither
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])  # padding row (mask False)
  labels, mask = jnp.array([0, 4, 6, 6]), jnp.array([True, True, True, False])
  hit1, hit5, count = (int(x) for x in topk_hits(scores, labels, mask))
  assert (hit1, hit5, count) == (1, 2, 3)
  assert math.isclose(hit1 / count, 1 / 3)
