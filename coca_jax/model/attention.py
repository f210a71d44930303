"""Multi-head attention through jax.nn.dot_product_attention, with logical axis names.

Queries, keys and values are separate projections (not one fused qkv kernel) so that the
key/value input may be wider than the query, as in the attentional pooler.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coca_jax.model import partitioning as P


class HeadsProjection(nn.Module):
  """(..., in) -> (..., heads, head_dim). The kernel is created at its full 3-D shape (not
  flattened, as nn.DenseGeneral does) so that its logical axis names apply at init."""
  num_heads: int
  head_dim: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2))
    kernel = self.param("kernel", P.param_init(init, ("embed", "heads", "kv")),
                        (x.shape[-1], self.num_heads, self.head_dim), jnp.float32)
    y = jnp.einsum("...d,dhk->...hk", x.astype(self.dtype), kernel.astype(self.dtype))
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
    y = jnp.einsum("...hk,hkd->...d", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class MultiHeadAttention(nn.Module):
  num_heads: int
  width: Optional[int] = None  # output and query-projection width; default: query input width
  use_bias: bool = True
  dtype: Any = jnp.float32
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None, cache=None):
    """inputs_q (B, T, Dq), inputs_kv (B, S, Dkv), mask bool broadcastable to (B, 1, T, S).

    Decoding (`coca_jax.decode`) passes a `cache` dict and gets (out, entries to store) back:
      {"key", "value", "index"}: self-attention over cached keys/values (B, S, H, D) with
          inputs_kv's own written in at position `index` (`mask` hides the unwritten ones);
          returns inputs_kv's keys/values, which the caller stores at `index` (the stacked
          caches of all layers are then updated in place, once per step);
      {"key", "value"}: cross-attention to keys (B, H, D, S) and values (B, H, S, D) of an
          earlier step (inputs_kv unused; returns {}); when they have fewer rows than the
          queries, each serves a group of consecutive rows (the beams of one image) so they are
          never copied per beam;
      {}: inputs_kv's keys/values are computed and returned, for the steps after, already in
          the layout the products over them take (so no step transposes them again).
    """
    width = self.width or inputs_q.shape[-1]
    head_dim = width // self.num_heads

    def project(name, x):
      return HeadsProjection(self.num_heads, head_dim, self.use_bias, self.dtype, name=name)(x)

    q = project("query", inputs_q)
    if cache is not None and "index" not in cache:  # decoding's cross-attention
      if mask is not None:
        raise ValueError("cross-attention to stored keys/values takes no mask")
      stored = cache
      if not cache:  # the first step: the image's keys/values, stored for the steps after
        k, v = project("key", inputs_kv), project("value", inputs_kv)
        stored = {"key": P.constrain(jnp.transpose(k, (0, 2, 3, 1)),
                                     ("act_batch", "act_heads", "act_kv", "act_len")),
                  "value": P.constrain(jnp.transpose(v, (0, 2, 1, 3)),
                                       ("act_batch", "act_heads", "act_len", "act_kv"))}
      out = _attend_to_stored(q, stored["key"], stored["value"])
      out = OutputProjection(width, self.dtype, name="out")(out)
      new = {} if cache else stored
      return P.constrain(out, ("act_batch", "act_len", "act_embed")), new
    k = project("key", inputs_kv)
    v = project("value", inputs_kv)
    new = {"key": k, "value": v}
    if cache:
      write = lambda c, x: jax.lax.dynamic_update_slice_in_dim(
          c, x.astype(c.dtype), cache["index"], axis=1)
      k, v = write(cache["key"], k), write(cache["value"], v)
    q = P.constrain(q, ("act_batch", "act_len", "act_heads", "act_kv"))
    k = P.constrain(k, ("act_batch", "act_len", "act_heads", "act_kv"))
    v = P.constrain(v, ("act_batch", "act_len", "act_heads", "act_kv"))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
    out = OutputProjection(width, self.dtype, name="out")(out)
    out = P.constrain(out, ("act_batch", "act_len", "act_embed"))
    if cache is None:
      return out
    return out, new


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
