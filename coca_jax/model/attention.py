"""Multi-head attention through jax.nn.dot_product_attention, with logical axis names.

Queries, keys and values are separate projections (not one fused qkv kernel) so that the
key/value input may be wider than the query, as in the attentional pooler.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coca_jax.model import partitioning as P


class MultiHeadAttention(nn.Module):
  num_heads: int
  width: Optional[int] = None  # output and query-projection width; default: query input width
  use_bias: bool = True
  dtype: Any = jnp.float32
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, inputs_q, inputs_kv, mask=None):
    """inputs_q (B, T, Dq), inputs_kv (B, S, Dkv), mask bool broadcastable to (B, 1, T, S)."""
    width = self.width or inputs_q.shape[-1]
    head_dim = width // self.num_heads

    def project(name, x):
      return nn.DenseGeneral(
          features=(self.num_heads, head_dim), axis=-1, use_bias=self.use_bias,
          dtype=self.dtype, param_dtype=jnp.float32,
          kernel_init=P.param_init(nn.initializers.xavier_uniform(), ("embed", "heads", "kv")),
          bias_init=P.param_init(nn.initializers.zeros, ("heads", "kv")),
          name=name)(x)

    q = project("query", inputs_q)
    k = project("key", inputs_kv)
    v = project("value", inputs_kv)
    q = P.constrain(q, ("act_batch", "act_len", "act_heads", "act_kv"))
    k = P.constrain(k, ("act_batch", "act_len", "act_heads", "act_kv"))
    v = P.constrain(v, ("act_batch", "act_len", "act_heads", "act_kv"))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
    out = nn.DenseGeneral(
        features=width, axis=(-2, -1), use_bias=True, dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=P.param_init(nn.initializers.xavier_uniform(), ("heads", "kv", "embed")),
        bias_init=P.param_init(nn.initializers.zeros, ("embed",)),
        name="out")(out)
    return P.constrain(out, ("act_batch", "act_len", "act_embed"))
