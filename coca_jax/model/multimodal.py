"""The multimodal decoder: text states cross-attend to the image tokens, then vocabulary logits."""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from coca_jax.model import partitioning as P
from coca_jax.model.blocks import MultimodalLayer, compute_dtype, layer_norm, run_layers
from coca_jax.model.config import ModelConfig
from coca_jax.model.linear import module_product


class MultimodalDecoder(nn.Module):
  """(text states (B, T, W), image tokens (B, M, W)) -> float32 logits (B, T, vocab).

  Decoding (`coca_jax.inference.decode`): with a `cache`, x is the state of position `index`
  alone, and (logits, updated cache) return; image_tokens are needed only while the cache has
  no cross-attention keys/values yet (the first step).
  """
  cfg: ModelConfig
  tied_embedding: Optional[Any] = None  # the shared nn.Embed when the projection is tied
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, image_tokens, cache=None, index=None, return_states=False):
    """`return_states`: (logits, final states (B, T, W), projection (W, vocab)), both in the
    compute dtype, so that a loss can make the logits itself (`caption_loss_chunks`)."""
    cfg, d = self.cfg, self.cfg.decoder
    dtype = compute_dtype(cfg)
    layer_kwargs = dict(num_heads=d.num_heads, mlp_dim=d.mlp_dim,
                        mlp_after_self_attention=d.mlp_after_self_attention,
                        deterministic=self.deterministic)
    if cache is None:
      length = x.shape[1]
      causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
      x = run_layers(MultimodalLayer, d.depth, cfg, "layers", x.astype(dtype),
                     (causal, image_tokens.astype(dtype)), **layer_kwargs)
    else:
      causal = jnp.arange(cache["self"]["key"].shape[3]) <= index  # keys written so far
      context = None if image_tokens is None else image_tokens.astype(dtype)
      x, cache = run_layers(MultimodalLayer, d.depth, cfg, "layers", x.astype(dtype),
                            (causal, context), cache=cache, index=index, **layer_kwargs)
    x = layer_norm(cfg, "ln_final")(x)
    if self.tied_embedding is not None:
      proj = self.tied_embedding.embedding.T
    else:
      proj = self.param("proj", P.param_init(nn.initializers.normal(cfg.text.width ** -0.5),
                                             ("embed", "vocab")),
                        (cfg.text.width, cfg.text.vocab_size), jnp.float32)
    logits = module_product(self, x, proj.astype(dtype), name="proj")
    if return_states:
      return logits.astype(jnp.float32), x, proj.astype(dtype)
    logits = P.constrain(logits.astype(jnp.float32), ("act_batch", "act_len", "act_vocab"))
    return logits if cache is None else (logits, cache)
