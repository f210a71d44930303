"""KV-cached generation (coca_jax.inference.decode) against full recomputation, brute force and
open_clip.

Random micro models repeat a few tokens, so each model is biased first: the decoder's output
columns of two tokens it likes are swapped with the end and pad ids' columns, so that captions
end (or hit the pad id) at various lengths.
"""
import collections
import functools
import itertools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import coca_jax
from coca_jax.inference import decode
from coca_jax.model import linear
from model_fixtures import BOS, EOS, MICRO, MICRO_OPEN_CLIP, PAD, config, make_images

MAX_LEN, MIN_LEN = 9, 3
LAYOUTS = {"paper": MICRO, "open_clip": MICRO_OPEN_CLIP}


def greedy_config(**kwargs):
  kwargs = dict(dict(start_id=BOS, end_id=EOS, pad_id=PAD, max_len=MAX_LEN, min_len=MIN_LEN),
                **kwargs)
  return decode.GenerationConfig(**kwargs)


def swap_columns(proj, a, b):
  proj = np.array(proj)
  proj[:, [a, b]] = proj[:, [b, a]]
  return proj


def init_model(base, scan, **overrides):
  model = coca_jax.create_model(config(base, scan_layers=scan, **overrides))
  size = model.cfg.vision.image_size
  text = jnp.full((1, 4), BOS, jnp.int32)
  variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                           text))
  return model, variables, make_images(6, size, seed=1)


@functools.lru_cache()
def biased_model(layout, scan):
  """(model, variables, images): the end and pad ids take the decoder columns of the 2nd and
  3rd most generated tokens."""
  model, variables, images = init_model(LAYOUTS[layout], scan)
  tokens = decode.generate(model, variables, images,
                           greedy_config(min_len=0, force_end=False, stop_on_pad=False)).tokens
  counts = collections.Counter(np.asarray(tokens)[:, 1:].ravel().tolist())
  liked = [t for t, _ in counts.most_common() if t not in (PAD, BOS, EOS)]
  params = dict(variables["params"])
  decoder = dict(params["decoder"])
  decoder["proj"] = swap_columns(swap_columns(decoder["proj"], EOS, liked[1]), PAD, liked[2])
  params["decoder"] = decoder
  return model, {"params": params}, images


@pytest.fixture(scope="module", params=[(layout, scan) for layout in LAYOUTS
                                        for scan in (False, True)],
                ids=lambda p: f"{p[0]}-{'scan' if p[1] else 'unrolled'}")
def setup(request):
  return biased_model(*request.param)


@pytest.fixture(scope="module")
def paper():
  return biased_model("paper", False)


def image_tokens(model, variables, images):
  return jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image)[1])(variables, images)


# --- the cached step itself ---------------------------------------------------------------

def test_cached_steps_equal_full_forward(setup):
  """Teacher forcing through decode_step, position by position, gives decode()'s logits, also
  with pad and end ids inside the text (the text tower's key mask) and two rows per image."""
  model, variables, images = setup
  tokens = image_tokens(model, variables, images[:3])
  rng = np.random.default_rng(0)
  text = rng.integers(4, model.cfg.text.vocab_size, (6, MAX_LEN)).astype(np.int32)
  text[:, 0] = BOS
  text[0, 3] = text[1, 2] = text[2, 5:] = PAD
  text[3, 4] = EOS
  text = jnp.asarray(text)
  rows = jnp.repeat(tokens, 2, axis=0)  # the full forward sees each image twice
  full = jax.jit(lambda v, t, i: model.apply(v, t, i, method=model.decode))(variables, text, rows)

  @jax.jit
  def cached(variables, text, tokens):
    cache = coca_jax.model.empty_decode_cache(model.cfg, 3, MAX_LEN)
    first, cache = model.apply(variables, text[::2], 0, cache, tokens, method=model.decode_step)
    cache = jax.tree.map(lambda c: jnp.repeat(c, 2, axis=1), cache)
    cache["decoder"]["cross"] = jax.tree.map(lambda c: c[:, ::2], cache["decoder"]["cross"])

    def body(cache, index):
      logits, cache = model.apply(variables, text, index, cache, method=model.decode_step)
      return cache, logits
    _, rest = jax.lax.scan(body, cache, jnp.arange(1, MAX_LEN))
    return first, jnp.moveaxis(rest, 0, 1)

  first, rest = cached(variables, text, tokens)
  np.testing.assert_allclose(first, full[::2, 0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(rest, full[:, 1:], atol=1e-5, rtol=1e-5)


def test_a_step_writes_each_cache_once_and_no_layer_copies_its_own(paper):
  """The step's self-attention reads every layer's cached keys/values where they lie: the only
  writes are the stacked caches' updates (keys and values of each tower), however many layers;
  a layer that wrote its new position into a copy of its cache would add two per layer."""
  model, variables, images = paper
  tokens = image_tokens(model, variables, images[:2])
  cache = coca_jax.model.empty_decode_cache(model.cfg, 2, MAX_LEN)
  _, cache = model.apply(variables, jnp.full((2, MAX_LEN), BOS), 0, cache, tokens,
                         method=model.decode_step)
  step = jax.jit(lambda v, t, c: model.apply(v, t, 1, c, method=model.decode_step))
  text = step.lower(variables, jnp.full((2, MAX_LEN), BOS), cache).as_text()
  assert model.cfg.text.depth + model.cfg.decoder.depth > 2
  assert text.count("stablehlo.dynamic_update_slice") == 4


# --- greedy against recomputing the prefix ---------------------------------------------------

def reference_greedy(model, variables, images, cfg):
  """open_clip's loop, naively: every step runs the whole prefix through decode()."""
  tokens = np.asarray(image_tokens(model, variables, images))
  forward = jax.jit(lambda v, t, i: model.apply(v, t, i, method=model.decode))
  rng = np.random.default_rng(1)
  out = np.full((len(images), cfg.max_len), cfg.pad_id, np.int32)
  out[:, 0] = cfg.start_id
  done = np.zeros(len(images), bool)
  for cur in range(1, cfg.max_len):
    # Positions after the prefix hold junk: causality keeps it out of position cur - 1.
    text = out.copy()
    text[:, cur:] = rng.integers(0, model.cfg.text.vocab_size, (len(images), cfg.max_len - cur))
    logits = np.array(forward(variables, jnp.asarray(text), tokens)[:, cur - 1])
    if cur < cfg.min_len:
      logits[:, cfg.end_id] = -np.inf
    for row, generated in zip(logits, out[:, :cur]):
      for t in set(generated.tolist()) if cfg.repetition_penalty != 1 else ():
        row[t] = row[t] * cfg.repetition_penalty if row[t] < 0 else row[t] / cfg.repetition_penalty
      n = cfg.no_repeat_ngram_size
      if n and cur + 1 >= n:
        prefix = tuple(generated[cur - n + 1:])
        for j in range(cur - n + 1):
          if tuple(generated[j:j + n - 1]) == prefix:
            row[generated[j + n - 1]] = -np.inf
    token = logits.argmax(-1)
    if cfg.force_end and cur == cfg.max_len - 1:
      token[:] = cfg.end_id
    token[done] = cfg.pad_id
    out[:, cur] = token
    done |= (token == cfg.end_id) | (cfg.stop_on_pad & (token == cfg.pad_id))
  return out


@pytest.mark.parametrize("stop_on_pad", [True, False])
def test_greedy_equals_recomputation(setup, stop_on_pad):
  model, variables, images = setup
  cfg = greedy_config(stop_on_pad=stop_on_pad)
  expected = reference_greedy(model, variables, images, cfg)
  got = np.asarray(decode.generate(model, variables, images, cfg).tokens)
  np.testing.assert_array_equal(got, expected)
  # The bias did its job: some caption ended before max_len, through an end or pad id.
  assert (got[:, -1] == PAD).any(), got


def test_few_rows_read_transposed_copies_and_change_no_token(setup, monkeypatch):
  """On CPU, greedy captions of 2-16 rows make the text towers' kernels (out, in) at the first
  step (one (3 * width, width) array per self-attention layer) and read them at every step,
  or read those `with_transposed_kernels` made; the captions are those of the plain
  products, the scores equal within float32 sums."""
  model, variables, images = setup
  cfg = greedy_config(stop_on_pad=False)
  width = model.cfg.text.width
  decode._compiled.cache_clear()  # pylint: disable=protected-access
  program = decode._compiled(model.cfg, cfg, "images").lower(  # pylint: disable=protected-access
      {"params": variables["params"]}, images, jax.random.key(0)).compile().as_text()
  assert f"f32[{3 * width},{width}]" in program
  with_copies = decode.generate(model, variables, images, cfg)
  # Made once beforehand, the same copies: the same captions, and they are what is read (a
  # vocabulary projection of zeros makes every logit 0, so every token the first id).
  prepared = decode.with_transposed_kernels(model, variables)
  qkv = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(prepared)[0]
         if "qkv" in jax.tree_util.keystr(path)]
  assert qkv and all(leaf.shape[-2:] == (3 * width, width) for leaf in qkv)
  np.testing.assert_array_equal(decode.generate(model, prepared, images, cfg).tokens,
                                with_copies.tokens)
  copies = prepared[linear.TRANSPOSED_KERNELS]
  zeroed = dict(prepared, **{linear.TRANSPOSED_KERNELS: dict(
      copies, decoder=dict(copies["decoder"], proj=jnp.zeros_like(copies["decoder"]["proj"])))})
  assert (np.asarray(decode.generate(model, zeroed, images, cfg).tokens)[:, 1:-1] == 0).all()
  monkeypatch.setattr(linear, "FEW_ROWS", (0, 0))
  decode._compiled.cache_clear()  # pylint: disable=protected-access
  plain = decode.generate(model, variables, images, cfg)
  decode._compiled.cache_clear()  # pylint: disable=protected-access
  np.testing.assert_array_equal(with_copies.tokens, plain.tokens)
  np.testing.assert_allclose(with_copies.scores, plain.scores, rtol=1e-5, atol=1e-5)


def test_only_the_copies_later_steps_read_are_made(paper):
  """The transposed copies are those of the products that every later step runs: one "qkv"
  per self-attention, the cross-attention's query and output, the MLPs and the vocabulary;
  none for the image's keys/values (projected at the first step only) or for the separate
  query/key/value projections. A first step of one image (beam search's, 1 row) makes the
  same ones as `with_transposed_kernels` (2 rows)."""
  model, variables, images = paper
  prepared = decode.with_transposed_kernels(model, variables)[linear.TRANSPOSED_KERNELS]

  def made(tree):
    return {jax.tree_util.keystr(path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

  paths = made(prepared)
  assert not [p for p in paths if "['key']" in p or "['value']" in p]
  assert not [p for p in paths if "['query']" in p and "cross_attn" not in p]
  layers = model.cfg.text.depth, model.cfg.decoder.depth
  assert sum(p.endswith("['qkv']") for p in paths) == sum(layers)
  assert sum(p.endswith("['query']['kernel']") for p in paths) == layers[1]
  tokens = image_tokens(model, variables, images[:1])
  _, first = model.apply(
      variables, jnp.full((1, MAX_LEN), BOS, jnp.int32), 0,
      coca_jax.model.empty_decode_cache(model.cfg, 1, MAX_LEN), tokens,
      method=model.decode_step, mutable=[linear.TRANSPOSED_KERNELS])
  assert made(first[linear.TRANSPOSED_KERNELS]) == paths


@pytest.mark.parametrize("penalty,ngram", [(1.8, 0), (1.0, 2), (0.7, 3), (1.5, 1)])
def test_repetition_controls_equal_recomputation(paper, penalty, ngram):
  model, variables, images = paper
  cfg = greedy_config(repetition_penalty=penalty, no_repeat_ngram_size=ngram, max_len=12)
  expected = reference_greedy(model, variables, images, cfg)
  got = np.asarray(decode.generate(model, variables, images, cfg).tokens)
  np.testing.assert_array_equal(got, expected)
  plain = np.asarray(decode.generate(model, variables, images, greedy_config(max_len=12)).tokens)
  assert not np.array_equal(got, plain)  # the controls changed something


def test_no_repeat_ngram_holds_for_every_strategy(paper):
  model, variables, images = paper
  for strategy in decode.STRATEGIES:
    tokens = np.asarray(decode.generate(model, variables, images, greedy_config(
        strategy=strategy, no_repeat_ngram_size=2, max_len=12, num_beams=3, stop_on_pad=False),
        rng=jax.random.key(0)).tokens)
    for row in tokens:
      end = list(row).index(EOS) if EOS in row else len(row)
      pairs = list(zip(row[:end], row[1:end]))
      assert len(pairs) == len(set(pairs)), (strategy, row)


def test_greedy_without_forced_end(paper):
  model, variables, images = paper
  cfg = greedy_config(force_end=False, min_len=0)
  got = np.asarray(decode.generate(model, variables, images, cfg).tokens)
  np.testing.assert_array_equal(got, reference_greedy(model, variables, images, cfg))


def test_tied_embeddings_and_training_settings():
  """Tied output projection: exact against recomputation. bfloat16 with scanned, rematerialised
  layers and dropout configured (inactive when generating): well-formed captions."""
  model, variables, images = init_model(MICRO, False, decoder__tie_embeddings=True)
  cfg = greedy_config(stop_on_pad=False)
  np.testing.assert_array_equal(decode.generate(model, variables, images, cfg).tokens,
                                reference_greedy(model, variables, images, cfg))
  model, variables, images = init_model(MICRO, True, dtype="bfloat16", remat_policy="full",
                                        dropout_rate=0.1)
  for strategy in ("greedy", "beam"):
    tokens = np.asarray(decode.generate(model, variables, images,
                                        greedy_config(strategy=strategy, num_beams=3)).tokens)
    for row in tokens:
      stops = (EOS, PAD) if strategy == "greedy" else (EOS,)  # beams treat PAD as a token
      end = next(i for i in range(1, MAX_LEN) if row[i] in stops)
      assert row[0] == BOS and (row[end + 1:] == PAD).all(), row


# --- beam search --------------------------------------------------------------------------

def test_one_beam_equals_greedy(paper):
  model, variables, images = paper
  greedy = decode.generate(model, variables, images, greedy_config(stop_on_pad=False))
  beam = decode.generate(model, variables, images,
                         greedy_config(strategy="beam", num_beams=1, length_penalty=0.7))
  np.testing.assert_array_equal(beam.tokens, greedy.tokens)


def brute_force(model, variables, image, cfg):
  """Every caption the rules allow, each scored as beam search scores it -> the best."""
  vocab = model.cfg.text.vocab_size
  captions = []
  for n in range(1, cfg.max_len):  # n tokens after the start token
    for body in itertools.product(range(vocab), repeat=n):
      ends = [i for i, t in enumerate(body) if t == cfg.end_id]
      if ends and ends[0] != n - 1:
        continue  # a caption stops at its first end token
      ended = bool(ends)
      if ended and n < cfg.min_len:
        continue
      if not ended and n < cfg.max_len - 1:
        continue  # an unfinished caption runs to max_len
      if cfg.force_end and n == cfg.max_len - 1 and not ended:
        continue
      captions.append([cfg.start_id, *body])
  text = np.full((len(captions), cfg.max_len), cfg.pad_id, np.int32)
  for row, caption in zip(text, captions):
    row[:len(caption)] = caption
  tokens = jnp.repeat(image_tokens(model, variables, image[None]), len(captions), axis=0)
  logits = jax.jit(lambda v, t, i: model.apply(v, t, i, method=model.decode))(
      variables, jnp.asarray(text), tokens)
  log_probs = np.asarray(jax.nn.log_softmax(logits), np.float64)
  scores = []
  for row, caption in zip(log_probs, captions):
    total = sum(row[i, caption[i + 1]] for i in range(len(caption) - 1))
    scores.append(total / len(caption) ** cfg.length_penalty)
  best = int(np.argmax(scores))
  return text[best], scores[best], np.sort(scores)[-2]


@pytest.mark.parametrize("force_end,length_penalty,early_stopping",
                         [(True, 0.0, False), (False, 1.0, "never")])
def test_wide_beam_finds_the_most_likely_caption(force_end, length_penalty, early_stopping):
  """Vocabulary 5, captions of at most 4 tokens: 80 beams hold every prefix (4 * 4 live ones
  times 5 continuations at the last step), so beam search is exhaustive and must return the
  brute-force optimum. (A beam only as wide as the vocabulary is not exhaustive beyond two
  generated tokens.) With a positive length penalty Hugging Face's default stopping test is a
  heuristic; "never" uses a true bound."""
  model, variables, images = init_model(MICRO, False, text__vocab_size=5)
  cfg = greedy_config(strategy="beam", num_beams=80, max_len=4, min_len=2, force_end=force_end,
                      length_penalty=length_penalty, early_stopping=early_stopping)
  out = decode.generate(model, variables, images, cfg)
  for i, image in enumerate(images):
    best, score, runner_up = brute_force(model, variables, image, cfg)
    assert score - runner_up > 1e-4, "ambiguous optimum; pick another seed"
    np.testing.assert_array_equal(out.tokens[i], best)
    np.testing.assert_allclose(out.scores[i], score, rtol=1e-5)


# --- sampling --------------------------------------------------------------------------------

def test_top_k_one_equals_greedy(paper):
  model, variables, images = paper
  greedy = decode.generate(model, variables, images, greedy_config())
  sampled = decode.generate(model, variables, images,
                            greedy_config(strategy="sample", top_k=1, temperature=0.7),
                            rng=jax.random.key(3))
  np.testing.assert_array_equal(sampled.tokens, greedy.tokens)


def test_fixed_seed_is_reproducible(paper):
  model, variables, images = paper
  cfg = greedy_config(strategy="sample", temperature=1.5)
  a = decode.generate(model, variables, images, cfg, rng=jax.random.key(7))
  b = decode.generate(model, variables, images, cfg, rng=jax.random.key(7))
  c = decode.generate(model, variables, images, cfg, rng=jax.random.key(8))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_top_p_filter():
  logits = jnp.log(jnp.array([[0.1, 0.5, 0.05, 0.3, 0.05]]))
  kept = lambda p: np.flatnonzero(np.isfinite(decode.filter_top_p(logits, p)[0])).tolist()
  assert kept(0.4) == [1]
  assert kept(0.7) == [1, 3]  # 0.5 < 0.7: the token that crosses p is kept
  assert kept(0.85) == [0, 1, 3]
  assert kept(1e-6) == [1]
  np.testing.assert_array_equal(decode.filter_top_k(logits, 2)[0] > -jnp.inf,
                                [False, True, False, True, False])


def test_top_p_samples_stay_in_the_nucleus(paper):
  """The first sampled token of many captions of one image: only nucleus tokens, several."""
  model, variables, images = paper
  n, p = 256, 0.6
  one = image_tokens(model, variables, images[:1])
  cfg = greedy_config(strategy="sample", top_p=p, temperature=2.0, min_len=0, max_len=3)
  tokens = np.asarray(decode.generate_from_image_tokens(
      model, variables, jnp.repeat(one, n, axis=0), cfg, rng=jax.random.key(0)).tokens)
  logits = model.apply(variables, jnp.full((1, 1), BOS, jnp.int32), one,
                       method=model.decode)[0, 0]
  nucleus = set(np.flatnonzero(np.isfinite(decode.filter_top_p(logits, p))).tolist())
  probs = np.asarray(jax.nn.softmax(logits))
  assert probs[sorted(nucleus)].sum() >= p and len(nucleus) >= 2, (nucleus, probs)
  seen = set(tokens[:, 1].tolist())
  assert seen <= nucleus, (seen, nucleus)
  assert len(seen) >= 2


def test_config_errors():
  with pytest.raises(ValueError, match="start_id=None"):
    decode.resolve(decode.GenerationConfig(max_len=MAX_LEN), MICRO)
  with pytest.raises(ValueError, match="max_len=14 outside 2..13"):
    decode.resolve(greedy_config(max_len=14), MICRO)
  with pytest.raises(ValueError, match="min_len=9 outside"):
    decode.resolve(greedy_config(min_len=9), MICRO)
  assert decode.resolve(decode.GenerationConfig(start_id=BOS, max_len=MAX_LEN),
                        MICRO).end_id == EOS
  with pytest.raises(ValueError, match="needs rng"):
    decode.generate(MICRO, {}, None, greedy_config(strategy="sample"))


# --- repetition controls against Hugging Face's processors ---------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_repetition_processors_equal_hugging_face(size):
  transformers = pytest.importorskip("transformers")
  torch_ = pytest.importorskip("torch")
  rng = np.random.default_rng(size)
  scores = rng.standard_normal((6, 11)).astype(np.float32) * 3
  tokens = rng.integers(0, 4, (6, 9)).astype(np.int32)  # few ids: many repeats
  for cur_len in range(1, 10):
    ids = torch_.from_numpy(tokens[:, :cur_len].astype(np.int64))
    for penalty in (1.3, 0.6):
      expected = transformers.RepetitionPenaltyLogitsProcessor(penalty)(
          ids, torch_.from_numpy(scores.copy())).numpy()
      got = decode.repetition_penalty(jnp.asarray(scores), jnp.asarray(tokens), cur_len, penalty)
      np.testing.assert_allclose(got, expected, rtol=1e-6)
    expected = transformers.NoRepeatNGramLogitsProcessor(size)(
        ids, torch_.from_numpy(scores.copy())).numpy()
    got = decode.no_repeat_ngram(jnp.asarray(scores), jnp.asarray(tokens), cur_len, size)
    np.testing.assert_array_equal(np.asarray(got), expected)


def _lowered_sha256(strategy, **settings):
  import hashlib  # pylint: disable=g-import-not-at-top
  model = coca_jax.create_model(config(MICRO))
  size = model.cfg.vision.image_size
  cfg = decode.resolve(greedy_config(strategy=strategy, num_beams=3, **settings), MICRO)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)),
                             jnp.full((1, 4), BOS, jnp.int32))
  run = decode._compiled.__wrapped__(model.cfg, cfg, "images")  # pylint: disable=protected-access
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  text = run.lower({"params": variables["params"]}, images, jax.random.key(0)).as_text()
  return hashlib.sha256(text.encode()).hexdigest()


# The lowered programs (no debug info) with the repetition controls off, as they were before
# the controls existed; pinned again whenever the model's own lowering changes (last:
# decoding's first step makes no transposed copies that later steps do not read,
# `coca_jax.model.linear.module_product`'s with_copy), never for a change in the controls.
LOWERED_BEFORE = {
    "greedy": "1abfc2fcb99d885695b0001b0f5939f7c0b411e25194b0f0e56b2f3a910a48a0",
    "beam": "6dd36729fe2eaf85601d313a3e6a61a9f9be467ac5c487a33fff0316eab3f792",
    "sample": "d89a0acb1d86ac7a98284e3c9eeaee3a42a3d2dc91874bd828246233ed8b00f6",
}


@pytest.mark.parametrize("strategy", decode.STRATEGIES)
def test_controls_off_lower_to_the_same_program(strategy):
  assert _lowered_sha256(strategy) == LOWERED_BEFORE[strategy]
  assert _lowered_sha256(strategy, repetition_penalty=1.2) != LOWERED_BEFORE[strategy]


# --- settings at their extremes ------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1e-6, 1e-30, 1e-300, 5e-324])
def test_temperature_to_zero_is_greedy(paper, temperature):
  """Down to float32's underflow (1e-300 and the smallest double become 0.0 there)."""
  model, variables, images = paper
  greedy = decode.generate(model, variables, images, greedy_config())
  cold = decode.generate(model, variables, images,
                         greedy_config(strategy="sample", temperature=temperature),
                         rng=jax.random.key(11))
  np.testing.assert_array_equal(cold.tokens, greedy.tokens)


def test_sampling_scores_at_the_limits():
  logits = jnp.array([[2.0, -1.0, 0.5, -jnp.inf, 3.0]])
  probs = lambda **kw: np.asarray(jax.nn.softmax(decode.sampling_scores(
      decode.GenerationConfig(strategy="sample", **kw), logits)))[0]
  np.testing.assert_allclose(probs(temperature=1.0), jax.nn.softmax(logits)[0], rtol=1e-6)
  for cold in (1e-3, 1e-40, 1e-300):
    np.testing.assert_array_equal(probs(temperature=cold), [0, 0, 0, 0, 1])
  for hot in (1e30, 1e38, 1e300):  # 1e300 overflows float32 to inf
    np.testing.assert_allclose(probs(temperature=hot), [0.25, 0.25, 0.25, 0, 0.25], rtol=1e-6)
  np.testing.assert_allclose(probs(temperature=1e300, top_k=2), [0.5, 0, 0, 0, 0.5], rtol=1e-6)
  for p in (1e-12, 1e-300):
    np.testing.assert_array_equal(probs(top_p=p), [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(probs(top_k=5), probs())
  np.testing.assert_array_equal(probs(top_k=1000), probs())
  tied = jnp.array([[1.0, 1.0, 0.0]])
  np.testing.assert_allclose(jax.nn.softmax(decode.sampling_scores(decode.GenerationConfig(
      strategy="sample", temperature=1e-30), tied))[0], [0.5, 0.5, 0])  # ties share


def test_wide_top_k_and_full_top_p_keep_every_token(paper):
  model, variables, images = paper
  vocab = model.cfg.text.vocab_size
  run = lambda **kw: decode.generate(model, variables, images, greedy_config(
      strategy="sample", temperature=1.3, **kw), rng=jax.random.key(4)).tokens
  plain = run()
  for settings in (dict(top_k=vocab), dict(top_k=vocab + 7), dict(top_p=1.0)):
    np.testing.assert_array_equal(run(**settings), plain)
  np.testing.assert_array_equal(
      run(top_p=1e-9), decode.generate(model, variables, images, greedy_config()).tokens)


@pytest.mark.parametrize("strategy", decode.STRATEGIES)
def test_shortest_caption_limits(paper, strategy):
  """max_len 2 is [start, end]; min_len max_len - 1 puts the end token last."""
  model, variables, images = paper
  rng = jax.random.key(2)
  out = decode.generate(model, variables, images,
                        greedy_config(strategy=strategy, max_len=2, min_len=0), rng=rng)
  np.testing.assert_array_equal(out.tokens, np.tile([BOS, EOS], (len(images), 1)))
  out = np.asarray(decode.generate(
      model, variables, images, greedy_config(strategy=strategy, min_len=MAX_LEN - 1,
                                               stop_on_pad=False), rng=rng).tokens)
  assert (out[:, -1] == EOS).all() and not (out[:, 1:-1] == EOS).any(), out


REFUSED = [
    (dict(strategy="topk"), "strategy='topk' not in"),
    (dict(max_len=1), "max_len=1 outside 2..13"),
    (dict(max_len=9.0), "max_len=9.0: an integer"),
    (dict(min_len=-1), "min_len=-1 outside 0..max_len-1"),
    (dict(end_id=10_000), "end_id=10000 is not a token id"),
    (dict(pad_id=True), "pad_id=True: an integer"),
    (dict(stop_on_pad="False"), "stop_on_pad='False': True or False"),
    (dict(force_end=0), "force_end=0: True or False"),
    (dict(strategy="beam", num_beams=0), "num_beams=0 < 1"),
    (dict(strategy="beam", num_beams=2.5), "num_beams=2.5: an integer"),
    (dict(strategy="beam", length_penalty=float("nan")), "length_penalty=nan: must be finite"),
    (dict(strategy="beam", length_penalty=float("inf")), "length_penalty=inf: must be finite"),
    (dict(strategy="beam", beam_score="prob"), "beam_score='prob' not in"),
    (dict(strategy="beam", early_stopping=1), "early_stopping=1: True, False or 'never'"),
    (dict(strategy="beam", early_stopping="always"), "early_stopping='always'"),
    (dict(strategy="sample", top_k=-1), "top_k=-1: need top_k >= 0"),
    (dict(strategy="sample", top_k=2.5), "top_k=2.5: an integer"),
    (dict(strategy="sample", top_p=0.0), "top_p=0.0: need 0 < top_p <= 1"),
    (dict(strategy="sample", top_p=1.5), "top_p=1.5: need 0 < top_p <= 1"),
    (dict(strategy="sample", top_p=float("nan")), "top_p=nan: need 0 < top_p <= 1"),
    (dict(strategy="sample", temperature=0.0), "temperature=0.0: need 0 < temperature < inf"),
    (dict(strategy="sample", temperature=-1.0), "temperature=-1.0: need 0 < temperature"),
    (dict(strategy="sample", temperature=float("inf")), "temperature=inf: need 0 <"),
    (dict(strategy="sample", temperature=float("nan")), "temperature=nan: need 0 <"),
    (dict(strategy="sample", temperature="0.7"), "temperature='0.7': a real number"),
    (dict(strategy="greedy", temperature=0.7), "temperature=0.7 is read by strategy='sample'"),
    (dict(strategy="beam", top_k=5), "top_k=5 is read by strategy='sample' only, not 'beam'"),
    (dict(strategy="greedy", top_p=0.9), "top_p=0.9 is read by strategy='sample'"),
    (dict(strategy="sample", length_penalty=2.0), "length_penalty=2.0 is read by strategy='beam'"),
    (dict(strategy="greedy", early_stopping=True), "early_stopping=True is read by"),
    (dict(repetition_penalty=0.0), "repetition_penalty=0.0: need 0 < repetition_penalty"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty=nan: need 0 <"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size=-1: need >= 0"),
    (dict(no_repeat_ngram_size=1.5), "no_repeat_ngram_size=1.5: an integer"),
]


@pytest.mark.parametrize("settings,message", REFUSED, ids=[m for _, m in REFUSED])
def test_settings_outside_their_range_are_refused_by_name(settings, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    decode.resolve(greedy_config(**settings), MICRO)


def test_numpy_settings_resolve_to_python_values():
  cfg = decode.resolve(greedy_config(strategy="sample", top_k=np.int64(3),
                                     temperature=np.float32(0.5), force_end=np.bool_(True)),
                       MICRO)
  assert type(cfg.top_k) is int and type(cfg.temperature) is float
  assert cfg.force_end is True


# --- open_clip's generate on a converted model --------------------------------------------

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
from test_open_clip_parity import SMALL_CONFIG, SMALL_OPEN_CLIP, randomize_, state_dict_numpy  # noqa: E402,E501  pylint: disable=g-import-not-at-top,wrong-import-position

SOT, EOT = 998, 999
OC_MAX_LEN, OC_MIN_LEN = 12, 3


@pytest.fixture(scope="module")
def small_open_clip():
  """The small open_clip CoCa, seeded and biased as above (end id 999, pad id 0)."""
  from coca_jax.convert.open_clip import convert_state_dict  # pylint: disable=g-import-not-at-top
  model = open_clip.coca_model.CoCa(**SMALL_OPEN_CLIP)
  randomize_(model, seed=2)
  images = np.random.default_rng(5).standard_normal((6, 3, 32, 32), dtype=np.float32)
  with torch.no_grad():
    first = model.generate(torch.from_numpy(images), generation_type="top_k", top_k=1,
                           seq_len=OC_MAX_LEN, min_seq_len=0, sot_token_id=SOT,
                           eos_token_id=EOT, pad_token_id=0)
    counts = collections.Counter(first[:, 1:].reshape(-1).tolist())
    liked = [t for t, _ in counts.most_common() if t not in (0, SOT, EOT)]
    proj = model.text_decoder.text_projection
    proj.copy_(torch.from_numpy(swap_columns(swap_columns(proj.numpy(), EOT, liked[1]), 0,
                                             liked[2])))
  model.eval()
  params = convert_state_dict(state_dict_numpy(model), SMALL_CONFIG)
  return model, params, images


def open_clip_generate(model, images, **kwargs):
  with torch.no_grad():
    out = model.generate(torch.from_numpy(images), seq_len=OC_MAX_LEN, min_seq_len=OC_MIN_LEN,
                         sot_token_id=SOT, eos_token_id=EOT, pad_token_id=0, **kwargs).numpy()
  padded = np.zeros((len(images), OC_MAX_LEN), np.int32)  # open_clip stops at the longest
  padded[:, :out.shape[1]] = out
  return padded


def oc_config(**kwargs):
  return decode.GenerationConfig(start_id=SOT, end_id=EOT, pad_id=0, max_len=OC_MAX_LEN,
                                 min_len=OC_MIN_LEN, **kwargs)


def test_greedy_equals_open_clip(small_open_clip):
  model, params, images = small_open_clip
  expected = open_clip_generate(model, images, generation_type="top_k", top_k=1)
  got = decode.generate(SMALL_CONFIG, params, jnp.asarray(images.transpose(0, 2, 3, 1)),
                        oc_config())
  np.testing.assert_array_equal(got.tokens, expected)
  ends = [list(row).index(EOT) if EOT in row else list(row[1:]).index(0) + 1 for row in expected]
  assert len(set(ends)) >= 3, expected  # captions of several lengths
  assert any(0 in row[1:e + 1] for row, e in zip(expected, ends)), expected  # a pad stop


@pytest.mark.parametrize("penalty", [1.5, 0.8])
def test_repetition_penalty_equals_open_clip(small_open_clip, penalty):
  """open_clip 3.3.0's generate(repetition_penalty=...): greedy (top_k=1) and beam search."""
  model, params, images = small_open_clip
  nhwc = jnp.asarray(images.transpose(0, 2, 3, 1))
  expected = open_clip_generate(model, images, generation_type="top_k", top_k=1,
                                repetition_penalty=penalty)
  got = decode.generate(SMALL_CONFIG, params, nhwc, oc_config(repetition_penalty=penalty))
  np.testing.assert_array_equal(got.tokens, expected)
  assert not np.array_equal(expected, open_clip_generate(model, images,
                                                         generation_type="top_k", top_k=1))
  expected = open_clip_generate(model, images, generation_type="beam_search", num_beams=4,
                                num_beam_groups=1, repetition_penalty=penalty)
  got = decode.generate(SMALL_CONFIG, params, nhwc, oc_config(
      strategy="beam", num_beams=4, beam_score="logit", force_end=False,
      repetition_penalty=penalty))
  np.testing.assert_array_equal(got.tokens, expected)


@pytest.mark.parametrize("scan", [False, True])
def test_beam_search_equals_open_clip(small_open_clip, scan):
  """num_beam_groups=1; open_clip ranks beams by summed raw logits and forces no end token."""
  from coca_jax.convert.open_clip import convert_state_dict  # pylint: disable=g-import-not-at-top
  model, params, images = small_open_clip
  cfg = dict(SMALL_CONFIG, scan_layers=scan)
  if scan:
    params = convert_state_dict(state_dict_numpy(model), cfg)
  expected = open_clip_generate(model, images, generation_type="beam_search", num_beams=4,
                                num_beam_groups=1)
  got = decode.generate(cfg, params, jnp.asarray(images.transpose(0, 2, 3, 1)),
                        oc_config(strategy="beam", num_beams=4, beam_score="logit",
                                  force_end=False))
  np.testing.assert_array_equal(got.tokens, expected)
  assert (expected[:, -1] == 0).any() and (expected[:, -1] != 0).any(), expected
