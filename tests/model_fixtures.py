"""Tiny model configs and inputs shared by the model tests (compile time dominates on CPU)."""
import copy

import jax
import jax.numpy as jnp
import numpy as np

PAD, BOS, EOS = 0, 2, 3

MICRO = dict(
    vision=dict(image_size=16, patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64),
    pooler=dict(layout="cascade", num_queries=8, num_heads=2),
    text=dict(vocab_size=64, context_length=12, width=32, depth=2, num_heads=2, mlp_dim=64,
              pad_id=PAD, eos_id=EOS),
    decoder=dict(depth=2, num_heads=2, mlp_dim=64),
    embed_dim=32,
)

# open_clip's layout at micro size: class token, ln_pre, one pooler, legacy mask, two MLPs.
MICRO_OPEN_CLIP = dict(
    vision=dict(image_size=16, patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64,
                class_token=True, pre_norm=True, patch_bias=False),
    pooler=dict(layout="single", num_queries=9, num_heads=2),
    text=dict(vocab_size=64, context_length=12, width=32, depth=2, num_heads=2, mlp_dim=64,
              pad_id=PAD, eos_id=EOS, legacy_cls_mask=True),
    decoder=dict(depth=2, num_heads=2, mlp_dim=64, mlp_after_self_attention=True),
    embed_dim=32,
    layer_norm_eps=1e-5,
)


def config(base=MICRO, **overrides):
  """A copy of `base` with top-level or `section.field` overrides."""
  cfg = copy.deepcopy(base)
  for key, value in overrides.items():
    if "__" in key:
      section, field = key.split("__")
      cfg[section][field] = value
    else:
      cfg[key] = value
  return cfg


def make_text(lengths, context=12, seed=0, vocab=64):
  """Right-padded texts: BOS, random tokens (never PAD/EOS), EOS, then PAD."""
  rng = np.random.default_rng(seed)
  text = np.full((len(lengths), context), PAD, np.int32)
  for i, n in enumerate(lengths):
    text[i, 0] = BOS
    text[i, 1:n - 1] = rng.integers(4, vocab, n - 2)
    text[i, n - 1] = EOS
  return jnp.asarray(text)


def make_images(batch, size=16, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3), jnp.float32)
