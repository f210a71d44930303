"""Attentional poolers: learned queries attend over the image encoder's tokens.

Three layouts (paper section 3; open_clip's coca_model):
  cascade  tokens = gen_pool(x); embedding = con_pool(tokens)   (the paper's default)
  parallel tokens = gen_pool(x); embedding = con_pool(x)
  single   out = pool(x) with n queries; embedding = out[0], tokens = out[1:]   (open_clip)
Each pooler's output is layer-normed; the embedding is then projected (unnormalised here).
With `pooler.pos_embedding_scale` > 0, the generative pooler (the single pooler in open_clip's
layout) reads the tokens plus a fixed position table (`pooler_positions`).
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from coca_jax.model import partitioning as P
from coca_jax.model.attention import MultiHeadAttention
from coca_jax.model.blocks import compute_dtype, layer_norm
from coca_jax.model.config import ModelConfig
from coca_jax.model.linear import linear
from coca_jax.model.vit import sincos2d_table


def pooler_positions(cfg: ModelConfig) -> np.ndarray:
  """float32 (N, vision.width), N the image encoder's tokens: MAE's 2-D sine-cosine table
  (`vit.sincos2d_table`) minus its mean over the patches, times `pooler.pos_embedding_scale`; a
  class token's row is zeros. Centred because on a small grid most of the table's low
  frequencies are nearly constant (8x8 patches, width 64: a shared vector of norm 5.2 in a
  table of row norm 5.7), which would only shift every token alike."""
  v = cfg.vision
  table = sincos2d_table(v.image_size // v.patch_size, v.width)
  table = (table - table.mean(axis=0)) * cfg.pooler.pos_embedding_scale
  if v.class_token:
    table = np.concatenate([np.zeros((1, v.width), np.float32), table])
  return table.astype(np.float32)


class AttentionalPooler(nn.Module):
  """MHA(query=ln_q(queries), key=value=ln_k(x)): no MLP, no residual."""
  cfg: ModelConfig
  num_queries: int

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    width = cfg.embed_dim
    queries = self.param("queries", P.param_init(nn.initializers.normal(width ** -0.5),
                                                 ("queries", "embed")),
                         (self.num_queries, width), jnp.float32)
    q = layer_norm(cfg, "ln_q")(queries.astype(compute_dtype(cfg)))
    kv = layer_norm(cfg, "ln_k")(x)
    q = jnp.broadcast_to(q, (x.shape[0],) + q.shape)
    return MultiHeadAttention(cfg.pooler.num_heads, width=width, use_bias=True,
                              dtype=compute_dtype(cfg), implementation=cfg.attention_impl,
                              name="attn")(q, kv)


class ImagePooling(nn.Module):
  """encoder tokens -> (unnormalised image embedding (B, embed_dim), image tokens (B, M, D))."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    layout, n = cfg.pooler.layout, cfg.pooler.num_queries
    placed = x  # what the pooler that makes the decoder's image tokens reads
    if cfg.pooler.pos_embedding_scale:
      placed = x + jnp.asarray(pooler_positions(cfg), x.dtype)
    if layout == "single":
      out = layer_norm(cfg, "ln_post")(AttentionalPooler(cfg, n, name="pooler")(placed))
      pooled, tokens = out[:, 0], out[:, 1:]
    else:
      tokens = layer_norm(cfg, "ln_generative")(
          AttentionalPooler(cfg, n, name="generative_pooler")(placed))
      source = tokens if layout == "cascade" else x
      pooled = layer_norm(cfg, "ln_contrastive")(
          AttentionalPooler(cfg, 1, name="contrastive_pooler")(source))[:, 0]
    proj = self.param("proj", P.param_init(nn.initializers.normal(cfg.embed_dim ** -0.5),
                                           ("embed", "proj")),
                      (cfg.embed_dim, cfg.embed_dim), jnp.float32)
    embedding = linear(pooled, proj.astype(pooled.dtype))
    return embedding, P.constrain(tokens, ("act_batch", "act_len", "act_embed"))
