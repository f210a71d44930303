"""Model FLOPs per example, counted tower by tower (a multiply-add is 2 FLOPs).

The 6·N·tokens rule is wrong for CoCa: the image encoder's params see the image tokens, the
decoder's see the text tokens and the poolers see a few hundred queries. So each tower is
counted at its own token count: the ViT over its patches (+ class token), the poolers over
their queries and keys, the unimodal text decoder over text + CLS with causal attention at half
cost, the multimodal decoder over the text but its last position (which has no next token to
predict: `CoCa.__call__` does not decode it) with cross-attention keys/values over the image
tokens, and the vocabulary projection over the same positions. Training is counted as 3x the
forward pass. Layer norms, softmax and other elementwise work are left out, as MFU conventions
do.
"""
from typing import Dict

from coca_jax.model.config import ModelConfig, from_dict


def _attention(q_tokens, kv_tokens, width, kv_width=None, causal=False):
  """Projections plus the two attention matmuls (QK^T and AV)."""
  kv_width = kv_width or width
  projections = 2 * q_tokens * width * width * 2 + 2 * kv_tokens * kv_width * width * 2
  mixing = 2 * 2 * q_tokens * kv_tokens * width
  return projections + (mixing / 2 if causal else mixing)


def _mlp(tokens, width, hidden):
  return 2 * 2 * tokens * width * hidden


def forward_flops(model_config, text_length: int = None) -> Dict[str, float]:
  """Forward FLOPs per example by tower (module docstring), plus "forward" and "train".

  Args:
    model_config: a model config dict (`coca_jax.model.config`).
    text_length: tokens per text, as `CoCa.__call__` gets them; defaults to the full context.

  Raises:
    ValueError: a text_length below 2 (`CoCa.__call__` needs a token to predict).
  """
  cfg: ModelConfig = from_dict(model_config)
  v, p, t, d = cfg.vision, cfg.pooler, cfg.text, cfg.decoder
  length = text_length or t.context_length
  if length < 2:
    raise ValueError(f"text_length: the training forward pass needs at least 2 tokens, "
                     f"got {length}")
  patches = v.num_patches
  n_img = patches + (1 if v.class_token else 0)
  flops = {}
  flops["patch_embedding"] = 2 * patches * v.patch_size ** 2 * 3 * v.width
  flops["image_encoder"] = v.depth * (_attention(n_img, n_img, v.width)
                                      + _mlp(n_img, v.width, v.mlp_dim))
  e = cfg.embed_dim
  if p.layout == "single":
    poolers = _attention(p.num_queries, n_img, e, v.width)
  else:
    poolers = _attention(p.num_queries, n_img, e, v.width)
    source, source_width = ((p.num_queries, e) if p.layout == "cascade" else (n_img, v.width))
    poolers += _attention(1, source, e, source_width)
  flops["poolers"] = poolers + 2 * e * e  # + the embedding projection
  n_txt = length + 1  # text + CLS
  flops["unimodal_text"] = t.depth * (_attention(n_txt, n_txt, t.width, causal=True)
                                      + _mlp(n_txt, t.width, t.mlp_dim)) + 2 * t.width * e
  n_image_tokens = cfg.num_image_tokens
  decoded = length - 1  # the last position predicts nothing
  per_layer = (_attention(decoded, decoded, t.width, causal=True)
               + _attention(decoded, n_image_tokens, t.width) + _mlp(decoded, t.width, d.mlp_dim))
  if d.mlp_after_self_attention:
    per_layer += _mlp(decoded, t.width, d.mlp_dim)
  flops["multimodal_decoder"] = d.depth * per_layer
  flops["vocab_projection"] = 2 * decoded * t.width * t.vocab_size
  flops["forward"] = sum(flops.values())
  flops["train"] = 3 * flops["forward"]
  return flops
