"""Caption generation with key/value caches: greedy, beam search, top-k / top-p sampling.

Everything (image encoder, the first step, the loop) runs in ONE jitted function, batched over
images. Each step feeds one new token through the unimodal text layers (no CLS token) and the
multimodal decoder (`CoCa.decode_step`); the cross-attention keys and values are computed once
per image at the first step and shared by its beams. The loop (`jax.lax.while_loop`) stops when
every caption (or every image's beam search) is done. On CPU, when a step has 2-16 rows (images
times beams), the first step also stores the text towers' kernels transposed, which the later
steps' products read at twice the speed (`coca_jax.model.linear`).

The rules follow open_clip 3.3.0's `CoCa.generate`, so its captions can be reproduced:
  * a caption is [start, tokens..., end, pad, ...]; `max_len` counts every token, the start
    and end tokens included (open_clip's `seq_len`);
  * `min_len`: the end token is forbidden while the caption holds fewer than `min_len` tokens,
    the start token included (open_clip's `min_seq_len`);
  * `force_end`: the token at index max_len - 1 is the end token (open_clip's top-k / top-p
    path does this; its beam search does not: set False to match it);
  * `stop_on_pad`: a caption that generates the pad id stops there, as open_clip's top-k / top-p
    path does (the CLIP tokenizer's pad id 0 is also "!"); beam search treats it as a token;
  * sampling filters (top-k, then top-p) see the untempered distribution, the temperature
    applies to what they keep (open_clip's order);
  * `repetition_penalty` and `no_repeat_ngram_size` act on the scores each strategy ranks
    (greedy and sampling: the logits, before top-k, top-p and the temperature; beam search: the
    log-probabilities, or the logits with `beam_score="logit"`), as Hugging Face's processors
    in open_clip's generate, and see the start token as generated;
  * beam search is Hugging Face's `BeamSearchScorer` (one group): each step ranks 2K
    continuations, end tokens among the first K close hypotheses scored sum / length **
    length_penalty (length = every token, start and end included), the first K others
    continue; `early_stopping` as in Hugging Face. open_clip sums raw logits where Hugging Face
    sums log-probabilities: `beam_score="logit"` reproduces it.
"""
import dataclasses
import functools
import math
import numbers
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from coca_jax.model import linear
from coca_jax.model.coca import CoCa, empty_decode_cache
from coca_jax.model.config import ModelConfig, from_dict

STRATEGIES = ("greedy", "beam", "sample")
BEAM_SCORES = ("log_prob", "logit")
# Beams 1..K-1 start this low so that the first step expands beam 0 alone (as Hugging Face).
INITIAL_BEAM_SCORE = -1e9


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """How to generate; hashable, so each setting compiles once. `resolve` checks every field
  (type and range, named in the error) and the fields that only one strategy reads.

  Limits, each tested: `temperature` -> 0 gives the most likely kept token (greedy), a huge
  one a uniform choice among the kept tokens (any finite value > 0 is safe: no overflow);
  `top_k` 1 is greedy, `top_k` >= the vocabulary keeps every token (as 0); `top_p` -> 0 keeps
  the most likely token only, 1 keeps all; `num_beams` 1 is greedy, a beam wider than the
  vocabulary searches exhaustively; `max_len` 2 is [start, end] with `force_end`.
  """
  strategy: str = "greedy"  # greedy | beam | sample
  max_len: int = 30  # tokens, start and end included (open_clip: seq_len); 2..context + 1
  min_len: int = 5  # no end token while fewer tokens, start included (open_clip: min_seq_len)
  start_id: Optional[int] = None  # required
  end_id: Optional[int] = None  # default: the model's text.eos_id
  pad_id: Optional[int] = None  # default: the model's text.pad_id
  stop_on_pad: bool = True  # greedy / sample: a generated pad id ends the caption
  force_end: bool = True  # the end token at index max_len - 1
  num_beams: int = 6  # beam: >= 1 (read by beam search only)
  length_penalty: float = 1.0  # beam: any finite value
  beam_score: str = "log_prob"  # log_prob (Hugging Face) | logit (open_clip 3.3.0)
  early_stopping: Union[bool, str] = False  # beam, Hugging Face's: False (heuristic), True, "never"
  top_k: int = 0  # sample: keep the k most likely tokens (0: all)
  top_p: float = 1.0  # sample: keep the smallest set holding this much probability, (0, 1]
  temperature: float = 1.0  # sample: (0, inf)
  # Against repetition, every strategy (Hugging Face's logits processors, as open_clip 3.3.0's
  # generate applies them): a token already in the caption has its score divided by this when
  # positive, multiplied when negative (1: off; > 0); and no n-gram of this size twice (0: off).
  repetition_penalty: float = 1.0
  no_repeat_ngram_size: int = 0

  @classmethod
  def for_tokenizer(cls, tokenizer, **kwargs) -> "GenerationConfig":
    """Start, end and pad ids from a `coca_jax.tokenizers` tokenizer."""
    return cls(start_id=tokenizer.bos_id, end_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
               **kwargs)


class Captions(NamedTuple):
  """tokens: int32 (B, max_len), start token first, pad ids after the end token.
  scores: float32 (B,): beam search, the best hypothesis' length-normalised score; otherwise the
  sum of the model's log-probabilities (before any filtering) of the generated tokens."""
  tokens: Any
  scores: Any


def resolve(config: GenerationConfig, model_config) -> GenerationConfig:
  """Fills the default ids from the model config and checks every field against it."""
  cfg = from_dict(model_config)
  t = cfg.text
  config = dataclasses.replace(
      config, end_id=t.eos_id if config.end_id is None else config.end_id,
      pad_id=t.pad_id if config.pad_id is None else config.pad_id)
  problems = _type_problems(config)
  if problems:
    raise ValueError("generation config: " + "; ".join(problems))
  config = dataclasses.replace(config, **{f.name: _plain(getattr(config, f.name))
                                          for f in dataclasses.fields(config)})
  for name in ("start_id", "end_id", "pad_id"):
    value = getattr(config, name)
    if value is None or not 0 <= value < t.vocab_size:
      problems.append(f"{name}={value} is not a token id in 0..{t.vocab_size - 1}")
  if config.strategy not in STRATEGIES:
    problems.append(f"strategy={config.strategy!r} not in {STRATEGIES}")
  if not 2 <= config.max_len <= t.context_length + 1:
    problems.append(f"max_len={config.max_len} outside 2..{t.context_length + 1} (positions "
                    f"0..max_len-2 are fed to the model, which has {t.context_length})")
  if not 0 <= config.min_len < config.max_len:
    problems.append(f"min_len={config.min_len} outside 0..max_len-1")
  if config.num_beams < 1:
    problems.append(f"num_beams={config.num_beams} < 1")
  if not math.isfinite(config.length_penalty):
    problems.append(f"length_penalty={config.length_penalty}: must be finite")
  if config.beam_score not in BEAM_SCORES:
    problems.append(f"beam_score={config.beam_score!r} not in {BEAM_SCORES}")
  if config.early_stopping not in (True, False, "never"):
    problems.append(f"early_stopping={config.early_stopping!r} not in (True, False, 'never')")
  if config.top_k < 0:
    problems.append(f"top_k={config.top_k}: need top_k >= 0 (0: all tokens)")
  if not 0 < config.top_p <= 1:
    problems.append(f"top_p={config.top_p}: need 0 < top_p <= 1")
  if not 0 < config.temperature < math.inf:
    problems.append(f"temperature={config.temperature}: need 0 < temperature < inf")
  if not 0 < config.repetition_penalty < math.inf:
    problems.append(f"repetition_penalty={config.repetition_penalty}: need 0 < "
                    "repetition_penalty < inf (1: off)")
  if config.no_repeat_ngram_size < 0:
    problems.append(f"no_repeat_ngram_size={config.no_repeat_ngram_size}: need >= 0 (0: off)")
  # Settings that only one strategy reads would otherwise be silently ignored.
  for name, strategy in (("top_k", "sample"), ("top_p", "sample"), ("temperature", "sample"),
                         ("length_penalty", "beam"), ("early_stopping", "beam")):
    default = GenerationConfig.__dataclass_fields__[name].default
    if getattr(config, name) != default and config.strategy != strategy:
      problems.append(f"{name}={getattr(config, name)!r} is read by strategy={strategy!r} "
                      f"only, not {config.strategy!r} (leave it at {default!r})")
  if problems:
    raise ValueError("generation config: " + "; ".join(problems))
  return config


_INT_FIELDS = ("max_len", "min_len", "start_id", "end_id", "pad_id", "num_beams", "top_k",
               "no_repeat_ngram_size")
_REAL_FIELDS = ("length_penalty", "top_p", "temperature", "repetition_penalty")


def _type_problems(config: GenerationConfig):
  """Fields of the wrong type (a string "False" would read as true, 2.5 beams as a crash)."""
  problems = []
  for name in _INT_FIELDS:
    value = getattr(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
      problems.append(f"{name}={value!r}: an integer")
  for name in _REAL_FIELDS:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      problems.append(f"{name}={value!r}: a real number")
  for name in ("stop_on_pad", "force_end"):
    if not isinstance(getattr(config, name), (bool, np.bool_)):
      problems.append(f"{name}={getattr(config, name)!r}: True or False")
  if not (isinstance(config.early_stopping, (bool, np.bool_)) or config.early_stopping == "never"):
    problems.append(f"early_stopping={config.early_stopping!r}: True, False or 'never'")
  return problems


def _plain(value):
  """NumPy scalars -> Python ones (one compiled program per setting, whatever the type)."""
  return value.item() if isinstance(value, np.generic) else value


def generate(model, params, images, config: GenerationConfig, rng=None) -> Captions:
  """Captions of images, all in one jitted program (compiled once per model config, generation
  config and input kind).

  Args:
    model: a `CoCa` module, or its model config (`ModelConfig`, ConfigDict or dict).
    params: the params tree, or the {"params": ...} variables dict, or what
      `with_transposed_kernels` returned (faster on CPU when called again and again).
    images: (B, H, W, 3) float32, normalised as for `CoCa.encode_image`.
    config: how to generate; checked and completed against the model by `resolve`.
    rng: a jax.random key; required by strategy "sample", unused otherwise.

  Returns:
    `Captions`: tokens (B, max_len) int32, scores (B,) float32.

  Raises:
    ValueError: a config that `resolve` refuses, sampling without `rng`, or images of another
      shape than the model's.
  """
  run = _compiled(_model_config(model), config, "images")
  return run(_variables(params), images, _key(rng, config))


def generate_from_image_tokens(model, params, image_tokens, config: GenerationConfig,
                               rng=None) -> Captions:
  """Captions from image tokens (B, M, width), float32 or the compute dtype, that
  `CoCa.encode_image` returned (so the image encoder runs once for embeddings and captions).
  Otherwise as `generate`: `Captions` of tokens (B, max_len) int32 and scores (B,) float32."""
  run = _compiled(_model_config(model), config, "image_tokens")
  return run(_variables(params), image_tokens, _key(rng, config))


def with_transposed_kernels(model, params) -> dict:
  """The variables for `generate` on CPU with the text towers' kernels already transposed
  (collection `coca_jax.model.linear.TRANSPOSED_KERNELS`), made once here rather than at the
  first step of every call (coca_ViT-B-32 on a 2-core CPU: about 0.4 s a call). Steps of
  2-16 rows (images times beams) read them, not the params' kernels: make them again whenever
  the params change. They hold the text towers' size again in memory.

  Args:
    model: a `CoCa` module, or its model config.
    params: the params tree, or the {"params": ...} variables dict.

  Returns:
    {"params": params, TRANSPOSED_KERNELS: {...}} on CPU; {"params": params} elsewhere.
  """
  variables = _variables(params)
  if not _transposes_kernels():
    return {"params": variables["params"]}
  return {"params": variables["params"],
          **_transposer(_model_config(model))(variables["params"])}


@functools.lru_cache(maxsize=16)
def _transposer(model_config: ModelConfig):
  """A jitted params -> {TRANSPOSED_KERNELS: ...}: a first decoding step on stand-in inputs,
  with the collection mutable, so that exactly the copies the steps read are made."""
  model = CoCa(model_config)
  size = model_config.vision.image_size

  def make(params):
    variables = {"params": params}
    tokens = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, size, size, 3)),
                                                  method=CoCa.encode_image)[1], variables)
    _, made = model.apply(
        variables, jnp.zeros((2, 2), jnp.int32), 0, empty_decode_cache(model_config, 2, 2),
        jnp.zeros((2,) + tokens.shape[1:], tokens.dtype), method=CoCa.decode_step,
        mutable=[linear.TRANSPOSED_KERNELS])
    return made
  return jax.jit(make)


def _transposes_kernels() -> bool:
  """Whether decoding here reads transposed kernels (`coca_jax.model.linear`): on CPU only."""
  return jax.default_backend() == "cpu"


def _model_config(model) -> ModelConfig:
  return model.cfg if isinstance(model, CoCa) else from_dict(model)


def _variables(params):
  """{"params": ...} (and TRANSPOSED_KERNELS when given) from the params tree or a variables
  dict."""
  if "params" in params and set(params) <= {"params", linear.TRANSPOSED_KERNELS}:
    return dict(params)
  return {"params": params}


def _key(rng, config):
  if rng is None:
    if config.strategy == "sample":
      raise ValueError("sampling needs rng (a jax.random key)")
    rng = jax.random.key(0)
  return rng


@functools.lru_cache(maxsize=64)
def _compiled(model_config: ModelConfig, config: GenerationConfig, inputs: str):
  config = resolve(config, model_config)
  model = CoCa(model_config)

  def run(variables, x, rng):
    if inputs == "images":
      _, x = model.apply(variables, x, method=CoCa.encode_image)
    return _generate(model, variables, config, x, rng)
  return jax.jit(run)


def _generate(model, variables, config, image_tokens, rng):
  b, length = image_tokens.shape[0], config.max_len
  tokens = jnp.full((b, length), config.pad_id, jnp.int32).at[:, 0].set(config.start_id)
  # The first step, one row per image, also caches the image's cross-attention keys/values;
  # on CPU, with few rows per later step, it also stores the text towers' kernels transposed
  # for the steps' products (`coca_jax.model.linear.module_product`), unless they were given
  # (`with_transposed_kernels`).
  rows = b * (config.num_beams if config.strategy == "beam" else 1)
  few_rows = (_transposes_kernels() and linear.TRANSPOSED_KERNELS not in variables
              and linear.few_rows(rows))
  (logits, cache), made = model.apply(
      variables, tokens, 0, empty_decode_cache(model.cfg, b, length), image_tokens,
      method=CoCa.decode_step, mutable=[linear.TRANSPOSED_KERNELS] if few_rows else [])
  variables = {**variables, **made}

  def step(tokens, index, cache):
    return model.apply(variables, tokens, index, cache, method=CoCa.decode_step)

  if config.strategy == "beam":
    return _beam_search(config, step, tokens, logits, cache)
  return _sample(config, step, tokens, logits, cache, rng)


def _mask_end(config, scores, cur_len):
  """min_len and force_end on scores (..., vocab) for the token at index cur_len."""
  is_end = jnp.arange(scores.shape[-1]) == config.end_id
  scores = jnp.where(is_end & (cur_len < config.min_len), -jnp.inf, scores)
  if config.force_end:
    scores = jnp.where(~is_end & (cur_len + 1 >= config.max_len), -jnp.inf, scores)
  return scores


def filter_top_k(logits, k: int):
  """logits (B, vocab) float32 (any leading axes) -> the same, -inf below the k-th largest
  logit of each row (ties with it are kept); k >= 1, and k >= the vocabulary keeps all."""
  if k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def filter_top_p(logits, p: float):
  """logits (B, vocab) float32 (any leading axes) -> the same, -inf outside the nucleus
  (Holtzman et al. 2020): the most likely tokens until their probability reaches p in (0, 1]
  (the token that crosses p is kept, and at least one token)."""
  ranked = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(ranked, axis=-1)
  kept = (jnp.cumsum(probs, axis=-1) - probs) < p
  kept = kept.at[..., 0].set(True)
  threshold = jnp.min(jnp.where(kept, ranked, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < threshold, -jnp.inf, logits)


def seen_tokens(tokens, cur_len, vocab_size: int):
  """bool (N, vocab): the tokens among tokens[:, :cur_len] (N, L) int32 (start token included,
  as Hugging Face's processors see open_clip's `out`)."""
  n, length = tokens.shape
  valid = jnp.arange(length)[None, :] < cur_len
  return jnp.zeros((n, vocab_size), bool).at[jnp.arange(n)[:, None], tokens].max(
      jnp.broadcast_to(valid, tokens.shape))


def repetition_penalty(scores, tokens, cur_len, penalty: float):
  """Hugging Face's RepetitionPenaltyLogitsProcessor (Keskar et al. 2019, CTRL): scores
  (N, vocab) float32 of tokens already generated (tokens (N, L) int32, the first cur_len
  valid, the start token included) divided by `penalty` where positive, multiplied where
  negative. Returns (N, vocab) float32."""
  seen = seen_tokens(tokens, cur_len, scores.shape[-1])
  return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)


def no_repeat_ngram(scores, tokens, cur_len, size: int):
  """Hugging Face's NoRepeatNGramLogitsProcessor: -inf for every token that would complete an
  n-gram (n = size) already in tokens[:, :cur_len], tokens (N, L) int32, cur_len an int32
  scalar; scores (N, vocab) float32 -> (N, vocab) float32."""
  n, length = tokens.shape
  starts = length - size + 1
  if starts <= 0:
    return scores
  match = jnp.ones((n, starts), bool)
  for k in range(size - 1):  # the n-gram's first size - 1 tokens equal the last size - 1 ones
    last = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(cur_len - size + 1 + k, 0), axis=1)
    match &= tokens[:, k:k + starts] == last
  match &= (jnp.arange(starts) + size - 1 < cur_len)[None, :] & (cur_len + 1 >= size)
  banned = jnp.zeros(scores.shape, bool).at[
      jnp.arange(n)[:, None], tokens[:, size - 1:size - 1 + starts]].max(match)
  return jnp.where(banned, -jnp.inf, scores)


def _against_repetition(config, scores, tokens, cur_len):
  """The repetition controls on scores (..., vocab) given tokens (..., L); nothing when off,
  so that the compiled program is then the one without them."""
  if config.repetition_penalty == 1 and not config.no_repeat_ngram_size:
    return scores
  shape = scores.shape
  scores, tokens = scores.reshape(-1, shape[-1]), tokens.reshape(-1, tokens.shape[-1])
  if config.repetition_penalty != 1:
    scores = repetition_penalty(scores, tokens, cur_len, config.repetition_penalty)
  if config.no_repeat_ngram_size:
    scores = no_repeat_ngram(scores, tokens, cur_len, config.no_repeat_ngram_size)
  return scores.reshape(shape)


def tempered(scores, temperature: float):
  """scores / temperature, shifted so that the largest is 0: the same distribution, but neither
  a tiny temperature (down to float32's underflow to 0) nor a huge one (up to its overflow to
  inf) can make inf - inf: the limits are the largest score alone (greedy; ties share) and a
  uniform choice among the finite scores. scores (B, vocab) float32 (any leading axes) -> the
  same shape and dtype; -inf stays -inf."""
  top = jnp.max(scores, axis=-1, keepdims=True)
  z = jnp.where(scores >= top, 0.0, (scores - top) / temperature)
  return jnp.where(jnp.isneginf(scores), -jnp.inf, z)


def sampling_scores(config: GenerationConfig, logits):
  """The scores that sampling draws from (`jax.random.categorical`): top-k, then top-p on the
  untempered logits (open_clip's order), then the temperature on what they keep.
  logits (B, vocab) float32 (any leading axes) -> float32, the same shape."""
  if config.top_k:
    logits = filter_top_k(logits, config.top_k)
  if config.top_p < 1:
    logits = filter_top_p(logits, config.top_p)
  return tempered(logits, config.temperature)


class SampleState(NamedTuple):
  """The greedy / sampling loop's carry, one row per image (B rows)."""
  tokens: Any  # int32 (B, max_len): the captions so far, pad ids from index cur_len on
  cur_len: Any  # int32 (): the index of the next token (tokens 0..cur_len-1 are set)
  done: Any  # bool (B,): the caption has ended (end token, or pad id with stop_on_pad)
  scores: Any  # float32 (B,): sum of the generated tokens' log-probabilities
  cache: Any  # `CoCa.decode_step`'s key/value caches


def _sample(config, step, tokens, logits, cache, rng):
  """Greedy or sampled captions, one row per image."""
  b = tokens.shape[0]

  def advance(state: SampleState, logits) -> SampleState:
    tokens, cur_len, done = state.tokens, state.cur_len, state.done
    x = _against_repetition(config, _mask_end(config, logits, cur_len), tokens, cur_len)
    if config.strategy == "greedy":
      token = jnp.argmax(x, axis=-1).astype(jnp.int32)
    else:
      key = jax.random.fold_in(rng, cur_len)
      token = jax.random.categorical(key, sampling_scores(config, x), axis=-1).astype(jnp.int32)
    token = jnp.where(done, config.pad_id, token)
    log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
    scores = state.scores + jnp.where(done, 0.0, log_prob)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], cur_len, axis=1)
    ended = token == config.end_id
    if config.stop_on_pad:
      ended |= token == config.pad_id
    return SampleState(tokens, cur_len + 1, done | ended, scores, state.cache)

  def cond(state: SampleState):
    return (state.cur_len < config.max_len) & ~jnp.all(state.done)

  def body(state: SampleState):
    logits, cache = step(state.tokens, state.cur_len - 1, state.cache)
    return advance(state._replace(cache=cache), logits)

  state = SampleState(tokens=tokens, cur_len=jnp.int32(1), done=jnp.zeros((b,), bool),
                      scores=jnp.zeros((b,), jnp.float32), cache=cache)
  state = advance(state, logits)
  state = jax.lax.while_loop(cond, body, state)
  return Captions(state.tokens, state.scores)


def _reorder_self_caches(cache, rows):
  """Gathers rows (B*K,) of the self-attention caches (axis 1); cross-attention caches hold
  one row per image and stay as they are."""
  return {tower: {name: (jax.tree.map(lambda c: jnp.take(c, rows, axis=1), entry)
                         if name == "self" else entry)
                  for name, entry in parts.items()}
          for tower, parts in cache.items()}


def _top_candidates(scores, n):
  """lax.top_k(scores.reshape(B, K * V), n), computed as the top n of each beam's top n: the
  same values and indices in the same order (ties included), but on CPU inside the loop a single
  top_k over K * V took ~190 ms per step for coca_ViT-B-32 with 6 beams, this ~2 ms."""
  b, k, vocab = scores.shape
  value, token = jax.lax.top_k(scores, min(n, vocab))
  index = token + (jnp.arange(k) * vocab)[:, None]
  value, pick = jax.lax.top_k(value.reshape(b, -1), n)
  return value, jnp.take_along_axis(index.reshape(b, -1), pick, axis=1)


class BeamState(NamedTuple):
  """The beam search loop's carry: K live beams and up to K finished hypotheses per image."""
  tokens: Any  # int32 (B, K, max_len): the live beams, pad ids from index cur_len on
  scores: Any  # float32 (B, K): their summed scores (log-probabilities or logits)
  finished_tokens: Any  # int32 (B, K, max_len): the closed hypotheses, end token included
  finished_scores: Any  # float32 (B, K): their length-normalised scores, -inf where none yet
  finished_count: Any  # int32 (B,): hypotheses closed so far, at most K
  done: Any  # bool (B,): the image's search has stopped (Hugging Face's test)
  # `CoCa.decode_step`'s caches: self-attention ones hold a row per beam (B*K), reordered as
  # beams move; cross-attention ones a row per image (B).
  cache: Any


def _beam_search(config, step, tokens, logits, cache):
  b, length = tokens.shape
  k, vocab = config.num_beams, logits.shape[-1]
  penalty = lambda n: jnp.asarray(n, jnp.float32) ** config.length_penalty

  def gather(x, index):  # x (B, N, ...), index (B, J) -> (B, J, ...)
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)

  def advance(state: BeamState, logits, cur_len) -> BeamState:
    tokens, scores, done = state.tokens, state.scores, state.done
    s = jax.nn.log_softmax(logits) if config.beam_score == "log_prob" else logits
    s = _against_repetition(config, _mask_end(config, s, cur_len), tokens, cur_len)
    value, index = _top_candidates(scores[..., None] + s, 2 * k)
    beam, token = index // vocab, (index % vocab).astype(jnp.int32)
    is_end = token == config.end_id
    # Hypotheses that end here: end tokens among the first k candidates.
    closing = is_end[:, :k] & ~done[:, None]
    closed = gather(tokens, beam[:, :k]).at[:, :, cur_len].set(config.end_id)
    pool_scores = jnp.concatenate(
        [state.finished_scores,
         jnp.where(closing, value[:, :k] / penalty(cur_len + 1), -jnp.inf)], 1)
    best = jax.lax.top_k(pool_scores, k)[1]  # ties keep the earlier hypotheses
    fin_scores = gather(pool_scores, best)
    fin_tokens = gather(jnp.concatenate([state.finished_tokens, closed], 1), best)
    fin_count = jnp.minimum(state.finished_count + closing.sum(1), k)
    # The first k other candidates continue.
    rank = jnp.arange(2 * k)
    live = jnp.argsort(jnp.where(is_end, rank + 2 * k, rank), axis=1)[:, :k]
    source = jnp.where(done[:, None], jnp.arange(k), gather(beam, live))
    tokens = jnp.where(done[:, None, None], tokens,
                       gather(tokens, source).at[:, :, cur_len].set(gather(token, live)))
    scores = jnp.where(done[:, None], scores, gather(value, live))
    cache = _reorder_self_caches(state.cache,
                                 (jnp.arange(b)[:, None] * k + source).reshape(-1))
    # Done when no live beam can beat the worst of k closed hypotheses (Hugging Face's test).
    if config.early_stopping is True:
      finished = fin_count >= k
    else:
      bound_len = cur_len + 1
      if config.early_stopping == "never" and config.length_penalty > 0:
        bound_len = config.max_len
      finished = (fin_count >= k) & (fin_scores.min(1) >= value[:, 0] / penalty(bound_len))
    return BeamState(tokens, scores, fin_tokens, fin_scores, fin_count, done | finished, cache)

  def cond(carry):
    state, cur_len = carry
    return (cur_len < config.max_len) & ~jnp.all(state.done)

  def body(carry):
    state, cur_len = carry
    logits, cache = step(state.tokens.reshape(b * k, length), cur_len - 1, state.cache)
    state = state._replace(cache=cache)
    return advance(state, logits.reshape(b, k, vocab), cur_len), cur_len + 1

  # Every beam starts as [start]; the first step's rows (one per image) become k rows each.
  cache = _reorder_self_caches(cache, jnp.repeat(jnp.arange(b), k))
  scores = jnp.full((b, k), INITIAL_BEAM_SCORE, jnp.float32).at[:, 0].set(0.0)
  state = BeamState(tokens=jnp.repeat(tokens[:, None], k, axis=1), scores=scores,
                    finished_tokens=jnp.full((b, k, length), config.pad_id, jnp.int32),
                    finished_scores=jnp.full((b, k), -jnp.inf, jnp.float32),
                    finished_count=jnp.zeros((b,), jnp.int32), done=jnp.zeros((b,), bool),
                    cache=cache)
  state = advance(state, jnp.repeat(logits[:, None], k, axis=1), 1)
  state, cur_len = jax.lax.while_loop(cond, body, (state, jnp.int32(2)))
  # Images still searching at max_len add their live beams, unfinished, as hypotheses.
  open_scores = jnp.where(state.done[:, None], -jnp.inf, state.scores / penalty(cur_len))
  pool_scores = jnp.concatenate([state.finished_scores, open_scores], 1)
  best = jnp.argmax(pool_scores, axis=1)[:, None]
  best_tokens = gather(jnp.concatenate([state.finished_tokens, state.tokens], 1), best)[:, 0]
  return Captions(best_tokens, gather(pool_scores, best)[:, 0])
