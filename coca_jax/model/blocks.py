"""Pre-LayerNorm transformer layers and the stack that runs them (scanned or unrolled).

A layer's __call__ takes (x, aux) and returns (x, None), the signature nn.scan expects; aux is a
tuple of inputs shared by every layer (attention mask, cross-attention context). Decoding one
position at a time (`coca_jax.inference.decode`) adds the layer's cache: (x, aux, cache) ->
(x, the cache entries to store: this position's keys/values, the image's at the first step);
aux then ends with the position.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from coca_jax.model import partitioning as P
from coca_jax.model.attention import MultiHeadAttention
from coca_jax.model.config import ModelConfig
from coca_jax.model.layer_norm import LayerNorm
from coca_jax.model.linear import TRANSPOSED_KERNELS
from coca_jax.model.mlp import Mlp

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def compute_dtype(cfg: ModelConfig):
  """The activations' dtype (`cfg.dtype`: float32, bfloat16 or float16); params stay float32."""
  return jnp.dtype(cfg.dtype)


def layer_norm(cfg: ModelConfig, name: str):
  """A LayerNorm submodule `name`: epsilon `cfg.layer_norm_eps` (open_clip: 1e-5), float32
  scale and bias, output in the compute dtype."""
  return LayerNorm(epsilon=cfg.layer_norm_eps, dtype=compute_dtype(cfg), name=name)


class SelfAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then (optionally) x + mlp(ln_2(x))."""
  cfg: ModelConfig
  num_heads: int
  mlp_dim: int
  has_mlp: bool = True
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask=None, cache=None, index=None):
    """-> x; with `cache` ({"key", "value"}, decoding position `index`) -> (x, the position's
    keys/values, to store at `index`)."""
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    y = layer_norm(cfg, "ln_1")(x)
    attn = MultiHeadAttention(self.num_heads, use_bias=cfg.qkv_bias, dtype=compute_dtype(cfg),
                              implementation=cfg.attention_impl, name="attn")
    if cache is None:
      y = attn(y, y, mask)
    else:
      y, cache = attn(y, y, mask, cache=dict(cache, index=index))
    x = x + drop(y)
    if self.has_mlp:
      y = layer_norm(cfg, "ln_2")(x)
      y = Mlp(self.mlp_dim, cfg.exact_gelu, compute_dtype(cfg), name="mlp")(y)
      x = x + drop(y)
    x = P.constrain(x, ("act_batch", "act_len", "act_embed"))
    return x if cache is None else (x, cache)


class CrossAttentionBlock(nn.Module):
  """x + attn(ln_1(x), ln_1_kv(context)), then x + mlp(ln_2(x))."""
  cfg: ModelConfig
  num_heads: int
  mlp_dim: int
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, context, cache=None):
    """-> x; with `cache` (decoding) -> (x, entries to store): {} computes the context's keys
    and values (once per image) and returns them; {"key", "value"} reuses them, leaves `context`
    unused and returns {}."""
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    q = layer_norm(cfg, "ln_1")(x)
    kv = layer_norm(cfg, "ln_1_kv")(context) if not cache else None
    attn = MultiHeadAttention(self.num_heads, use_bias=cfg.qkv_bias, dtype=compute_dtype(cfg),
                              implementation=cfg.attention_impl, name="attn")
    if cache is None:
      y = attn(q, kv)
    else:
      y, cache = attn(q, kv, cache=cache)
    x = x + drop(y)
    y = layer_norm(cfg, "ln_2")(x)
    y = Mlp(self.mlp_dim, cfg.exact_gelu, compute_dtype(cfg), name="mlp")(y)
    x = x + drop(y)
    x = P.constrain(x, ("act_batch", "act_len", "act_embed"))
    return x if cache is None else (x, cache)


class EncoderLayer(nn.Module):
  """A ViT / unimodal text layer: self-attention and MLP."""
  cfg: ModelConfig
  num_heads: int
  mlp_dim: int
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, aux, cache=None):
    block = SelfAttentionBlock(self.cfg, self.num_heads, self.mlp_dim, True, self.deterministic,
                               name="block")
    if cache is None:
      mask, = aux
      return block(x, mask), None
    mask, index = aux
    x, self_cache = block(x, mask, cache["self"], index)
    return x, {"self": self_cache}


class MultimodalLayer(nn.Module):
  """A multimodal decoder layer: causal self-attention, cross-attention, MLP(s)."""
  cfg: ModelConfig
  num_heads: int
  mlp_dim: int
  mlp_after_self_attention: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, aux, cache=None):
    self_attn = SelfAttentionBlock(self.cfg, self.num_heads, self.mlp_dim,
                                   self.mlp_after_self_attention, self.deterministic,
                                   name="self_attn")
    cross_attn = CrossAttentionBlock(self.cfg, self.num_heads, self.mlp_dim, self.deterministic,
                                     name="cross_attn")
    if cache is None:
      mask, context = aux
      return cross_attn(self_attn(x, mask), context), None
    # Decoding: the image's keys/values are computed at the first step ("cross" absent), then
    # only read; the self-attention cache grows by one position at every step.
    mask, context, index = aux
    x, self_new = self_attn(x, mask, cache["self"], index)
    x, cross_new = cross_attn(x, context, cache.get("cross", {}))
    if "cross" in cache:
      return x, {"self": self_new}
    return x, {"self": self_new, "cross": cross_new}


def run_layers(layer_cls, depth: int, cfg: ModelConfig, name: str, x, aux, cache=None,
               index=None, **layer_kwargs):
  """Runs `depth` layers inside the calling compact module: scanned or unrolled, with remat.

  Scanned params are stacked under `name` with a leading `layers` axis; unrolled ones live under
  `name_0` ... `name_{depth-1}` (`coca_jax.model.layer_stacking` converts between the two).
  Remat (`cfg.remat_policy`) applies in training only, never with a cache.

  Args:
    layer_cls: `EncoderLayer` or `MultimodalLayer`.
    depth: the number of layers.
    cfg: the model config (scan_layers, remat_policy).
    name: the params' name (see above).
    x: states (B, T, W) in the compute dtype (float32 / bfloat16 / float16).
    aux: inputs every layer shares: (mask,) or (mask, image tokens); see the layers.
    cache: decoding's key/value caches, every leaf with a leading layer axis, scanned or not (one
      layout for `coca_jax.inference.decode`): self-attention keys/values
      (layers, B, heads, S, head_dim); layer i reads slice i.
    index: int32 scalar (), the position being decoded (with `cache`).
    **layer_kwargs: the layer's other attributes (num_heads, mlp_dim, ...).

  Returns:
    x (B, T, W), same dtype; with `cache`: (x, the cache with position `index` written).
  """
  if cfg.remat_policy != "none" and cache is None:
    layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy],
                         prevent_cse=not cfg.scan_layers)
  if cache is not None:
    aux = aux + (index,)
  if cfg.scan_layers:
    stack = nn.scan(layer_cls, variable_axes={"params": 0, TRANSPOSED_KERNELS: 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=nn.broadcast if cache is None else (nn.broadcast, 0),
                    length=depth, metadata_params={nn.PARTITION_NAME: "layers"})
    layers = stack(cfg=cfg, name=name, **layer_kwargs)
    if cache is None:
      x, _ = layers(x, aux)
      return x
    x, new = layers(x, aux, cache)
    return x, store(cache, new, index)
  new = []
  for i in range(depth):
    layer = layer_cls(cfg=cfg, name=f"{name}_{i}", **layer_kwargs)
    if cache is None:
      x, _ = layer(x, aux)
    else:
      x, entries = layer(x, aux, jax.tree.map(lambda c, i=i: c[i], cache))
      new.append(entries)
  if cache is None:
    return x
  return x, store(cache, jax.tree.map(lambda *c: jnp.stack(c), *new), index)


def store(cache, new, index):
  """The cache after a decoding step: every layer's keys/values of the position written at
  `index` in one update of the stacked arrays (in place: copying per layer would move the whole
  cache once per layer and step); cross-attention ones (first step) kept whole.

  cache["self"] leaves are (layers, B, heads, S, head_dim), new["self"] ones
  (layers, B, 1, heads, head_dim), cast to the cache's dtype; index is an int32 scalar ().
  """
  cache = dict(cache)
  cache["self"] = jax.tree.map(
      lambda c, x: jax.lax.dynamic_update_slice_in_dim(
          c, jnp.swapaxes(x, 2, 3).astype(c.dtype), index, axis=3),
      cache["self"], new["self"])
  if "cross" in new:
    cache["cross"] = new["cross"]
  return cache
