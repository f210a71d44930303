"""Pre-LayerNorm transformer layers and the stack that runs them (scanned or unrolled).

A layer's __call__ takes (x, aux) and returns (x, None), the signature nn.scan expects; aux is a
tuple of inputs shared by every layer (attention mask, cross-attention context).
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coca_jax.model import partitioning as P
from coca_jax.model.attention import MultiHeadAttention
from coca_jax.model.config import ModelConfig
from coca_jax.model.mlp import Mlp

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def compute_dtype(cfg: ModelConfig):
  return jnp.dtype(cfg.dtype)


def layer_norm(cfg: ModelConfig, name: str):
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=compute_dtype(cfg), param_dtype=jnp.float32,
      scale_init=P.param_init(nn.initializers.ones, ("norm",)),
      bias_init=P.param_init(nn.initializers.zeros, ("norm",)), name=name)


class SelfAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then (optionally) x + mlp(ln_2(x))."""
  cfg: ModelConfig
  num_heads: int
  mlp_dim: int
  has_mlp: bool = True
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask=None):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    y = layer_norm(cfg, "ln_1")(x)
    y = MultiHeadAttention(self.num_heads, use_bias=cfg.qkv_bias, dtype=compute_dtype(cfg),
                           implementation=cfg.attention_impl, name="attn")(y, y, mask)
    x = x + drop(y)
    if self.has_mlp:
      y = layer_norm(cfg, "ln_2")(x)
      y = Mlp(self.mlp_dim, cfg.exact_gelu, compute_dtype(cfg), name="mlp")(y)
      x = x + drop(y)
    return P.constrain(x, ("act_batch", "act_len", "act_embed"))


class CrossAttentionBlock(nn.Module):
  """x + attn(ln_1(x), ln_1_kv(context)), then x + mlp(ln_2(x))."""
  cfg: ModelConfig
  num_heads: int
  mlp_dim: int
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, context):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)
    q = layer_norm(cfg, "ln_1")(x)
    kv = layer_norm(cfg, "ln_1_kv")(context)
    y = MultiHeadAttention(self.num_heads, use_bias=cfg.qkv_bias, dtype=compute_dtype(cfg),
                           implementation=cfg.attention_impl, name="attn")(q, kv)
    x = x + drop(y)
    y = layer_norm(cfg, "ln_2")(x)
    y = Mlp(self.mlp_dim, cfg.exact_gelu, compute_dtype(cfg), name="mlp")(y)
    x = x + drop(y)
    return P.constrain(x, ("act_batch", "act_len", "act_embed"))


class EncoderLayer(nn.Module):
  """A ViT / unimodal text layer: self-attention and MLP."""
  cfg: ModelConfig
  num_heads: int
  mlp_dim: int
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, aux):
    mask, = aux
    x = SelfAttentionBlock(self.cfg, self.num_heads, self.mlp_dim, True, self.deterministic,
                           name="block")(x, mask)
    return x, None


class MultimodalLayer(nn.Module):
  """A multimodal decoder layer: causal self-attention, cross-attention, MLP(s)."""
  cfg: ModelConfig
  num_heads: int
  mlp_dim: int
  mlp_after_self_attention: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, aux):
    mask, context = aux
    x = SelfAttentionBlock(self.cfg, self.num_heads, self.mlp_dim,
                           self.mlp_after_self_attention, self.deterministic,
                           name="self_attn")(x, mask)
    x = CrossAttentionBlock(self.cfg, self.num_heads, self.mlp_dim, self.deterministic,
                            name="cross_attn")(x, context)
    return x, None


def run_layers(layer_cls, depth: int, cfg: ModelConfig, name: str, x, aux, **layer_kwargs):
  """Runs `depth` layers inside the calling compact module: scanned or unrolled, with remat.

  Scanned params are stacked under `name` with a leading `layers` axis; unrolled ones live under
  `name_0` ... `name_{depth-1}` (`coca_jax.model.layer_stacking` converts between the two).
  """
  if cfg.remat_policy != "none":
    layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[cfg.remat_policy],
                         prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    stack = nn.scan(layer_cls, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                    length=depth, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = stack(cfg=cfg, name=name, **layer_kwargs)(x, aux)
  else:
    for i in range(depth):
      x, _ = layer_cls(cfg=cfg, name=f"{name}_{i}", **layer_kwargs)(x, aux)
  return x
