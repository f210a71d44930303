"""CoCa: the image encoder, poolers, unimodal text decoder and multimodal decoder, assembled."""
import math
from typing import Any, Dict

import flax.linen as nn
import jax.numpy as jnp

from coca_jax.model import partitioning as P
from coca_jax.model.blocks import compute_dtype
from coca_jax.model.config import ModelConfig, from_dict
from coca_jax.model.multimodal import MultimodalDecoder
from coca_jax.model.pooler import ImagePooling
from coca_jax.model.text import UnimodalTextDecoder
from coca_jax.model.vit import VisionTransformer


def l2_normalize(x, eps=1e-12):
  """x (B, D), any float dtype and leading axes -> float32 (B, D), rows of unit L2 norm.

  `eps` bounds the divisor from below, so an all-zero row stays zero instead of NaN.
  """
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def empty_decode_cache(cfg: ModelConfig, batch: int, length: int) -> Dict[str, Any]:
  """Self-attention key/value caches for `CoCa.decode_step`, zeros, (layers, batch, heads,
  length, head_dim) whether layers are scanned or not. The first step adds the decoder's
  cross-attention keys/values ("cross", one row per image)."""
  dtype = compute_dtype(cfg)

  def kv(depth, heads):
    shape = (depth, batch, heads, length, cfg.text.width // heads)
    return {"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}
  return {"text": {"self": kv(cfg.text.depth, cfg.text.num_heads)},
          "decoder": {"self": kv(cfg.decoder.depth, cfg.decoder.num_heads)}}


class CoCa(nn.Module):
  """Contrastive Captioner.

  Images are float (B, H, W, 3), already normalised; text is int (B, L) token ids, L at most
  `text.context_length`, right-padded with `text.pad_id`.
  """
  cfg: ModelConfig
  deterministic: bool = True

  def setup(self):
    """Submodules named as the params are: token_embedding (shared by both text decoders, and
    the output projection when `decoder.tie_embeddings`), visual, pooling, text, decoder; and
    logit_scale, the log of the contrastive temperature's inverse (init ln(1 / 0.07), paper
    section 3; open_clip)."""
    cfg = self.cfg
    self.token_embedding = nn.Embed(
        cfg.text.vocab_size, cfg.text.width, dtype=compute_dtype(cfg), param_dtype=jnp.float32,
        embedding_init=P.param_init(nn.initializers.normal(0.02), ("vocab", "embed")))
    self.visual = VisionTransformer(cfg, self.deterministic)
    self.pooling = ImagePooling(cfg)
    self.text = UnimodalTextDecoder(cfg, self.token_embedding, self.deterministic)
    self.decoder = MultimodalDecoder(
        cfg, self.token_embedding if cfg.decoder.tie_embeddings else None, self.deterministic)
    self.logit_scale = self.param(
        "logit_scale", P.param_init(nn.initializers.constant(cfg.logit_scale_init), ()),
        (), jnp.float32)

  # --- input checks: plain Python on static shapes, so they also run under jit -------------
  def _check_images(self, images):
    v = self.cfg.vision
    expected = (v.image_size, v.image_size, 3)
    if getattr(images, "ndim", None) != 4 or tuple(images.shape[1:]) != expected:
      raise ValueError(f"images: expected a float array of shape (batch, {v.image_size}, "
                       f"{v.image_size}, 3) (NHWC), got shape {getattr(images, 'shape', None)}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f"images: expected a float dtype (normalised pixels), got {images.dtype}")

  def _check_text(self, text, min_length: int = 1):
    t = self.cfg.text
    if getattr(text, "ndim", None) != 2:
      raise ValueError(f"text: expected int token ids of shape (batch, length), got shape "
                       f"{getattr(text, 'shape', None)}")
    if not jnp.issubdtype(text.dtype, jnp.integer):
      raise ValueError(f"text: expected integer token ids, got dtype {text.dtype}")
    if not 1 <= text.shape[1] <= t.context_length:
      raise ValueError(f"text: length {text.shape[1]} is outside 1..{t.context_length} "
                       "(text.context_length)")
    if text.shape[1] < min_length:
      raise ValueError(f"text: the training forward pass needs at least {min_length} tokens "
                       f"per row (one to predict), got shape {tuple(text.shape)}")

  # --- the public methods ---------------------------------------------------------------
  def encode_image(self, images, normalize: bool = True):
    """Runs the ViT and the poolers.

    Args:
      images: (B, H, W, 3) float, normalised pixels (NHWC); H = W = `vision.image_size`.
      normalize: L2-normalise the embedding (the contrastive loss and retrieval use it so).

    Returns:
      (image embedding (B, embed_dim): float32 when normalised, else the compute dtype;
      image tokens (B, M, width) in the compute dtype, M = `cfg.num_image_tokens`, which the
      multimodal decoder cross-attends to).

    Raises:
      ValueError: images of another shape, or not a float dtype.
    """
    self._check_images(images)
    embedding, tokens = self.pooling(self.visual(images))
    return (l2_normalize(embedding) if normalize else embedding), tokens

  def encode_text(self, text, normalize: bool = True):
    """Runs the unimodal text decoder, the CLS token appended last.

    Args:
      text: (B, L) int32 token ids, right-padded with `text.pad_id`, 1 <= L <= context_length.
      normalize: L2-normalise the embedding.

    Returns:
      (text embedding (B, embed_dim): the CLS state, layer-normed and projected; float32 when
      normalised, else the compute dtype; token states (B, L, width) of the text positions in
      the compute dtype, without the final norm: the multimodal decoder's input).

    Raises:
      ValueError: text not (B, L) integers, or L outside 1..context_length.
    """
    self._check_text(text)
    embedding, tokens = self.text(text)
    return (l2_normalize(embedding) if normalize else embedding), tokens

  def decode_tokens(self, text_tokens, image_tokens):
    """Multimodal decoder on unimodal token states -> float32 logits (B, L, vocab)."""
    width = self.cfg.text.width
    if image_tokens.ndim != 3 or image_tokens.shape[-1] != width:
      raise ValueError(f"image_tokens: expected shape (batch, tokens, {width}), "
                       f"got {image_tokens.shape}")
    if image_tokens.shape[0] != text_tokens.shape[0]:
      raise ValueError(f"image_tokens: batch {image_tokens.shape[0]} differs from the text "
                       f"batch {text_tokens.shape[0]}")
    return self.decoder(text_tokens, image_tokens)

  def decode(self, text, image_tokens):
    """Caption logits: position i predicts token i+1. -> float32 (B, L, vocab)."""
    _, text_tokens = self.encode_text(text, normalize=False)
    return self.decode_tokens(text_tokens, image_tokens)

  def decode_step(self, text, index, cache, image_tokens=None):
    """KV-cached generation: float32 logits (B, vocab) for the token after text[:, index].

    Only position `index` runs, through the unimodal layers (no CLS token) and the multimodal
    decoder; earlier positions come from `cache` (`empty_decode_cache` at first), which comes
    back updated. The first step passes `image_tokens` (one row per image): their
    cross-attention keys and values join the cache for every later step. Later steps may have
    several rows per image (beams, consecutive rows): the image's keys/values are shared.
    """
    states, text_cache = self.text(text, cache=cache["text"], index=index)
    logits, decoder_cache = self.decoder(states, image_tokens, cache=cache["decoder"],
                                         index=index)
    return logits[:, 0], {"text": text_cache, "decoder": decoder_cache}

  def get_logit_scale(self):
    """exp(temperature parameter), kept at most `max_logit_scale`."""
    return jnp.exp(jnp.minimum(self.logit_scale, math.log(self.cfg.max_logit_scale)))

  def __call__(self, images, text) -> Dict[str, Any]:
    """The training forward pass on images (B, H, W, 3) float32 and text (B, L) int32, L >= 2.

    -> {"image_embed", "text_embed" (B, embed_dim), "logits" (B, L - 1, vocab) float32,
    "logit_scale" ()}: logits at position i predict text[:, i + 1]. The last input position
    has no next token to predict, so the decoder does not run on it (as open_clip's CoCa in
    training); `decode` gives logits for every position. With `caption_loss_chunks` also
    "caption_state_chunks" (chunks, B, (L - 1) / chunks, W), the decoder's final states split
    along the text (zero-padded to a multiple of the chunk count), and "caption_proj"
    (W, vocab), from which `coca_jax.train.losses.coca_loss` makes the logits chunk by chunk.
    (Under jit, logits that nothing reads are never computed.)

    Raises:
      ValueError: text shorter than 2 tokens (no next token to predict), or as `encode_image`
        and `encode_text`.
    """
    self._check_text(text, min_length=2)
    image_embed, image_tokens = self.encode_image(images)
    text_embed, text_tokens = self.encode_text(text)
    text_tokens = text_tokens[:, :-1]
    out = {"image_embed": image_embed, "text_embed": text_embed,
           "logit_scale": self.get_logit_scale()}
    chunks = self.cfg.caption_loss_chunks
    if not chunks:
      return dict(out, logits=self.decode_tokens(text_tokens, image_tokens))
    logits, states, proj = self.decoder(text_tokens, image_tokens, return_states=True)
    b, length, width = states.shape
    size = -(-length // chunks)
    states = jnp.pad(states, ((0, 0), (0, size * chunks - length), (0, 0)))
    states = states.reshape(b, chunks, size, width).swapaxes(0, 1)
    return dict(out, logits=logits, caption_state_chunks=states, caption_proj=proj)


def create_model(model_config, deterministic: bool = True) -> CoCa:
  """A CoCa module from a ModelConfig, an ml_collections ConfigDict or a nested dict."""
  return CoCa(from_dict(model_config), deterministic=deterministic)
