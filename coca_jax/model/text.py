"""The unimodal text decoder: causal self-attention over the text, a CLS token appended last.

Its CLS state (layer-normed, projected) is the text embedding; its text-position states (without
the final norm) feed the multimodal decoder.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from coca_jax.model import partitioning as P
from coca_jax.model.blocks import EncoderLayer, compute_dtype, layer_norm, run_layers
from coca_jax.model.config import ModelConfig, TextConfig
from coca_jax.model.linear import linear


def valid_text_positions(text, t: TextConfig):
  """bool (B, L): True where a token of text (B, L) int32 is real text: not `t.pad_id`, and
  not after the first `t.eos_id` (the end token itself is real; no eos_id: padding only)."""
  valid = text != t.pad_id
  if t.eos_id is not None:
    eos = (text == t.eos_id).astype(jnp.int32)
    valid &= (jnp.cumsum(eos, axis=1) - eos) == 0
  return valid


def text_key_mask(text, t: TextConfig):
  """bool (B, L+1): the keys (text positions, then the appended CLS) rows may attend to.

  With `legacy_cls_mask` (open_clip's published weights) the mask is shifted right by one: key 0
  is always visible, key j > 0 is visible iff text[j-1] is not padding, so the CLS key is
  visible only when the text fills every slot. Key j depends on text[:j+1] only, so decoding
  one position at a time sees the keys a full forward pass would.

  text: (B, L) int32 token ids.
  """
  b = text.shape[0]
  if t.legacy_cls_mask:
    return jnp.concatenate([jnp.ones((b, 1), bool), text != t.pad_id], axis=1)
  return jnp.concatenate([valid_text_positions(text, t), jnp.ones((b, 1), bool)], axis=1)


def text_attention_mask(text, t: TextConfig):
  """bool (B, 1, L+1, L+1) mask over text (B, L) int32 plus the appended CLS position: every
  row is causal and masks invalid keys (`text_key_mask`); True where a query may attend."""
  length = text.shape[1]
  causal = jnp.tril(jnp.ones((length + 1, length + 1), bool))
  return causal[None, None] & text_key_mask(text, t)[:, None, None, :]


class UnimodalTextDecoder(nn.Module):
  """text (B, L) int -> (unnormalised embedding (B, embed_dim), token states (B, L, width)).

  Decoding (`coca_jax.inference.decode`): with a `cache`, only position `index` of `text` runs,
  without the CLS token -> (its token state (B, 1, width), updated cache).
  """
  cfg: ModelConfig
  token_embedding: Any  # an nn.Embed shared with a tied output projection
  deterministic: bool = True

  def _pos_embedding(self):
    return self.param("pos_embedding", P.param_init(nn.initializers.normal(0.01),
                                                    ("pos", "embed")),
                      (self.cfg.text.context_length + 1, self.cfg.text.width), jnp.float32)

  @nn.compact
  def __call__(self, text, cache=None, index=None):
    cfg, t = self.cfg, self.cfg.text
    dtype = compute_dtype(cfg)
    b, length = text.shape
    if cache is not None:
      token = jax.lax.dynamic_slice_in_dim(text, index, 1, axis=1)
      x = self.token_embedding(token).astype(dtype)
      x = x + jax.lax.dynamic_slice_in_dim(self._pos_embedding(), index, 1).astype(dtype)
      keys = text_key_mask(text, t)[:, :length] & (jnp.arange(length) <= index)
      return run_layers(EncoderLayer, t.depth, cfg, "layers", x, (keys[:, None, None],),
                        cache=cache, index=index, num_heads=t.num_heads, mlp_dim=t.mlp_dim,
                        deterministic=self.deterministic)
    x = self.token_embedding(text).astype(dtype)
    cls = self.param("cls_embedding", P.param_init(nn.initializers.normal(0.02), ("embed",)),
                     (t.width,), jnp.float32)
    x = jnp.concatenate([x, jnp.broadcast_to(cls.astype(dtype), (b, 1, t.width))], axis=1)
    x = x + self._pos_embedding()[:length + 1].astype(dtype)
    x = P.constrain(x, ("act_batch", "act_len", "act_embed"))
    x = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)(x)
    x = run_layers(EncoderLayer, t.depth, cfg, "layers", x, (text_attention_mask(text, t),),
                   num_heads=t.num_heads, mlp_dim=t.mlp_dim, deterministic=self.deterministic)
    pooled = layer_norm(cfg, "ln_final")(x[:, -1])
    proj = self.param("proj", P.param_init(nn.initializers.normal(t.width ** -0.5),
                                           ("embed", "proj")),
                      (t.width, cfg.embed_dim), jnp.float32)
    return linear(pooled, proj.astype(dtype)), x[:, :-1]
