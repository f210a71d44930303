"""Multi-head attention with logical axis names: through jax.nn.dot_product_attention without
a cache (training, encoding, a full forward pass); decoding's steps attend to their caches
where they lie (`_attend_with_self_cache`, `_attend_to_stored_cross`).

Queries, keys and values are separate projections (not one fused qkv kernel) so that the
key/value input may be wider than the query, as in the attentional pooler.
"""
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coca_jax.model import partitioning as P
from coca_jax.model.linear import (few_rows, module_product, product_transposed,
                                   row_count, transposed_copy)


class HeadsProjection(nn.Module):
  """(..., in) -> (..., heads, head_dim). The kernel is created at its full 3-D shape (not
  flattened, as nn.DenseGeneral does) so that its logical axis names apply at init."""
  num_heads: int
  head_dim: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, with_copy: bool = True):
    """x (..., in) -> (..., heads, head_dim) in `dtype`. `with_copy`: as in
    `coca_jax.model.linear.module_product` (False where decoding's steps never read one)."""
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    kernel = self.param("kernel", P.param_init(init, ("embed", "heads", "kv")),
                        (x.shape[-1], self.num_heads, self.head_dim), jnp.float32)
    # "...d,dhk->...hk"
    y = module_product(self, x.astype(self.dtype), kernel.astype(self.dtype),
                       with_copy=with_copy)
    if self.use_bias:
      bias = self.param("bias", P.param_init(nn.initializers.zeros, ("heads", "kv")),
                        (self.num_heads, self.head_dim), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class OutputProjection(nn.Module):
  """(..., heads, head_dim) -> (..., width)."""
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2)
    kernel = self.param("kernel", P.param_init(init, ("heads", "kv", "embed")),
                        x.shape[-2:] + (self.width,), jnp.float32)
    bias = self.param("bias", P.param_init(nn.initializers.zeros, ("embed",)), (self.width,),
                      jnp.float32)
    # "...hk,hkd->...d"
    y = module_product(self, x.astype(self.dtype), kernel.astype(self.dtype), 2)
    return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Multi-head attention with separate query, key, value and output projections.

  Params: "query", "key", "value" (`HeadsProjection`, kernels (Din, heads, head_dim)) and
  "out" (`OutputProjection`), the same in every mode below, so one set of params serves
  training and the decoding cache. head_dim = width // num_heads.

  Attributes:
    num_heads: attention heads; must divide `width`.
    width: output and query-projection width; default: the query input's width.
    use_bias: biases on the query, key and value projections (the output one always has one).
    dtype: compute dtype; params are float32.
    implementation: `jax.nn.dot_product_attention`'s ("xla", "cudnn"; None: JAX chooses);
      unused by decoding's steps.
  """
  num_heads: int
  width: Optional[int] = None  # output and query-projection width; default: query input width
  use_bias: bool = True
  dtype: Any = jnp.float32
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None, cache=None):
    """Attention of inputs_q to inputs_kv, in one of three modes chosen by `cache`.

    Args:
      inputs_q: queries' input (B, T, Dq), float (cast to `dtype`).
      inputs_kv: keys' and values' input (B, S, Dkv), float; unused once a cross-attention cache
        holds the keys/values.
      mask: bool, broadcastable to (B, 1, T, S) (heads axis 1); True where a query may attend to
        a key. None: every key.
      cache: how decoding (`coca_jax.inference.decode`) runs; one of
        None: training and encoding, see `_attend`;
        {"key", "value", "index"}: self-attention over cached keys/values, see
          `_attend_with_self_cache`;
        {"key", "value"} or {} (the first step): cross-attention to the keys/values stored at
          the first step, see `_attend_to_stored_cross`.

    Returns:
      Without `cache`: (B, T, width) in `dtype`. With one: (that, the cache entries to store).

    Raises:
      ValueError: a `mask` given with a cross-attention cache.
    """
    width = self.width or inputs_q.shape[-1]
    head_dim = width // self.num_heads

    def project(name):
      return HeadsProjection(self.num_heads, head_dim, self.use_bias, self.dtype, name=name)

    # Created here, applied in the helpers: @nn.compact submodules must be defined in __call__.
    layers = _Projections(project("query"), project("key"), project("value"),
                          OutputProjection(width, self.dtype, name="out"))
    if cache is None:
      return _attend(layers, inputs_q, inputs_kv, mask, self.implementation)
    if "index" in cache:
      qkv = self._decoding_qkv(inputs_q, head_dim) if inputs_q is inputs_kv else None
      return _attend_with_self_cache(layers, inputs_q, inputs_kv, mask, cache,
                                     self.implementation, qkv)
    if mask is not None:
      raise ValueError("cross-attention to stored keys/values takes no mask")
    return _attend_to_stored_cross(layers, inputs_q, inputs_kv, cache)

  def _decoding_qkv(self, x, head_dim):
    """Decoding's self-attention queries, keys and values (B, T, H, head_dim) each, from x
    (B, T, D), in one product over one (3 * H * head_dim, D) copy of the three kernels
    (`coca_jax.model.linear.transposed_copy`, variable "qkv"): three products over one input
    would share one broadcast of it, which XLA:CPU writes out whole. None without that copy
    or with more rows than `few_rows` takes; the projections then run one by one."""
    params = self.variables["params"]

    def kernel_t(name):  # (H * head_dim, D)
      return nn.unbox(params[name]["kernel"]).astype(self.dtype).reshape(x.shape[-1], -1).T

    qkv_t = transposed_copy(self, "qkv", lambda: jnp.concatenate(
        [kernel_t("query"), kernel_t("key"), kernel_t("value")]))
    if qkv_t is None or not few_rows(row_count(x)):
      return None
    y = product_transposed(x.astype(self.dtype), qkv_t)
    y = y.reshape(x.shape[:-1] + (3, self.num_heads, head_dim))
    if self.use_bias:
      biases = [nn.unbox(params[name]["bias"]) for name in ("query", "key", "value")]
      y = y + jnp.stack(biases).astype(self.dtype)
    return y[..., 0, :, :], y[..., 1, :, :], y[..., 2, :, :]


class _Projections(NamedTuple):
  """A `MultiHeadAttention`'s submodules, for the helpers that apply them."""
  query: HeadsProjection
  key: HeadsProjection
  value: HeadsProjection
  out: OutputProjection


def _attend(layers: _Projections, inputs_q, inputs_kv, mask, implementation):
  """No cache (training, encoding, a full forward pass): inputs_q (B, T, Dq) attends to
  inputs_kv (B, S, Dkv) under `mask` (bool, broadcastable to (B, 1, T, S)) -> (B, T, width)."""
  q = layers.query(inputs_q)
  k, v = layers.key(inputs_kv), layers.value(inputs_kv)
  return _dot_product_attention(layers, q, k, v, mask, implementation)


def _attend_with_self_cache(layers: _Projections, inputs_q, inputs_kv, mask, cache,
                            implementation, qkv=None):
  """Decoding's self-attention: the queries of the new position(s) of inputs_kv (B, T, D), at
  `cache["index"]` (int32 scalar) onwards, attend to the cached keys and values (B, H, S, D)
  of the earlier positions and to their own keys and values; `mask` (bool, broadcastable to
  (B, 1, T, S)) says which positions each query may see, as for the whole sequence.

  The cache is read where it lies, never written here: writing the new rows into a copy of
  each layer's cache for `jax.nn.dot_product_attention` moved every layer's cache once per step
  (twice on CPU, where the product wanted it transposed). Its (B, H, S, D) layout is the one
  both products take as it is. Scores are float32 and masked as in
  `jax.nn.dot_product_attention`'s XLA implementation (so an all-masked row averages, as there),
  over the cached rows before `index` and the new rows, in one softmax. `implementation` is
  unused here.

  Returns (out (B, T, width), {"key", "value"}: inputs_kv's own (B, T, H, D)); the caller stores
  them at `index`, so that the stacked caches of all layers are updated in place once per step
  (`coca_jax.model.blocks.store`) rather than copied per layer. `qkv`: the queries, keys and
  values already projected (`MultiHeadAttention._decoding_qkv`), else projected here.
  """
  del implementation
  if qkv is None:  # (steps that read transposed kernels read the one "qkv" copy instead)
    qkv = (layers.query(inputs_q, with_copy=False), layers.key(inputs_kv, with_copy=False),
           layers.value(inputs_kv, with_copy=False))
  q, k, v = qkv
  keys, values, index = cache["key"], cache["value"], cache["index"]
  t, s, head_dim = q.shape[1], keys.shape[2], q.shape[-1]
  mask = jnp.broadcast_to(jnp.ones((), bool) if mask is None else mask, (q.shape[0], 1, t, s))
  f32 = jnp.promote_types(q.dtype, jnp.float32)
  scale = jnp.asarray(head_dim ** -0.5, f32)
  # (B, H, T, S): cached rows from `index` on are not written yet (the new rows take them).
  cached = jnp.einsum("bthd,bhsd->bhts", q, keys, preferred_element_type=f32) * scale
  own = jnp.einsum("bthd,buhd->bhtu", q, k.astype(keys.dtype), preferred_element_type=f32) * scale
  scores = jnp.concatenate(
      [jnp.where(mask & (jnp.arange(s) < index), cached, _LARGE_NEGATIVE),
       jnp.where(jax.lax.dynamic_slice_in_dim(mask, index, t, axis=3), own, _LARGE_NEGATIVE)],
      axis=3)
  probs = jax.nn.softmax(scores, axis=3).astype(values.dtype)
  out = (jnp.einsum("bhts,bhsd->bthd", probs[..., :s], values, preferred_element_type=f32)
         + jnp.einsum("bhtu,buhd->bthd", probs[..., s:], v.astype(values.dtype),
                      preferred_element_type=f32))
  out = layers.out(out.astype(values.dtype))
  return P.constrain(out, ("act_batch", "act_len", "act_embed")), {"key": k, "value": v}


# jax.nn.dot_product_attention's fill for masked float32 scores.
_LARGE_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _attend_to_stored_cross(layers: _Projections, inputs_q, inputs_kv, cache):
  """Decoding's cross-attention to the image's keys (B, H, D, S) and values (B, H, S, D).

  `cache` {}: the first step; they are projected from inputs_kv (B, S, Dkv) and returned, to be
  stored, already in the layout the products over them take (so no later step transposes
  them). `cache` {"key", "value"}: the later steps; inputs_kv is unused and {} returns. When the
  keys/values have fewer rows than the queries (B*G, T, Dq), each serves a group of G
  consecutive rows (the beams of one image), so they are never copied per beam.

  Returns (out (B*G, T, width), the entries to store: the keys/values at the first step, else {}).
  """
  q = layers.query(inputs_q)
  stored = cache
  if not cache:  # (only this step projects the image: no transposed copies for it)
    k, v = layers.key(inputs_kv, with_copy=False), layers.value(inputs_kv, with_copy=False)
    stored = {"key": P.constrain(jnp.transpose(k, (0, 2, 3, 1)),
                                 ("act_batch", "act_heads", "act_kv", "act_len")),
              "value": P.constrain(jnp.transpose(v, (0, 2, 1, 3)),
                                   ("act_batch", "act_heads", "act_len", "act_kv"))}
  out = layers.out(_attend_to_stored(q, stored["key"], stored["value"]))
  new = {} if cache else stored
  return P.constrain(out, ("act_batch", "act_len", "act_embed")), new


def _dot_product_attention(layers: _Projections, q, k, v, mask, implementation):
  """Queries (B, T, H, D) over keys and values (B, S, H, D) -> projected (B, T, width)."""
  q = P.constrain(q, ("act_batch", "act_len", "act_heads", "act_kv"))
  k = P.constrain(k, ("act_batch", "act_len", "act_heads", "act_kv"))
  v = P.constrain(v, ("act_batch", "act_len", "act_heads", "act_kv"))
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  return P.constrain(layers.out(out), ("act_batch", "act_len", "act_embed"))


def _attend_to_stored(q, key, value):
  """Attention of queries (B*G, T, H, D) to stored keys (B, H, D, S) and values (B, H, S, D):
  one product each, no transposition of the stored arrays. Rows of a group of G consecutive
  queries (the beams of one image) share their image's keys and values."""
  b, heads, head_dim = key.shape[0], key.shape[1], key.shape[2]
  groups, t = q.shape[0] // b, q.shape[1]
  q = q.reshape(b, groups * t, heads, head_dim)
  logits = jnp.einsum("bqhd,bhds->bhqs", q, key) / jnp.sqrt(head_dim).astype(q.dtype)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(value.dtype)
  out = jnp.einsum("bhqs,bhsd->bqhd", probs, value)
  return out.reshape((b * groups, t) + out.shape[2:])
