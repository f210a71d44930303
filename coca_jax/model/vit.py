"""The ViT image encoder: patch embedding, optional class token, learned positions, blocks."""
import flax.linen as nn
import jax.numpy as jnp

from coca_jax.model import partitioning as P
from coca_jax.model.blocks import EncoderLayer, compute_dtype, layer_norm, run_layers
from coca_jax.model.config import ModelConfig


class VisionTransformer(nn.Module):
  """images (B, H, W, 3) float -> encoder tokens (B, N, vision.width), N = patches (+1)."""
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, images):
    cfg, v = self.cfg, self.cfg.vision
    dtype = compute_dtype(cfg)
    x = nn.Conv(v.width, (v.patch_size, v.patch_size), strides=(v.patch_size, v.patch_size),
                padding="VALID", use_bias=v.patch_bias, dtype=dtype, param_dtype=jnp.float32,
                kernel_init=P.param_init(nn.initializers.lecun_normal(),
                                         ("patch_h", "patch_w", "channels", "embed")),
                bias_init=P.param_init(nn.initializers.zeros, ("embed",)),
                name="patch_embed")(images.astype(dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, v.width)
    if v.class_token:
      cls = self.param("class_token", P.param_init(nn.initializers.normal(v.width ** -0.5),
                                                   ("embed",)), (v.width,), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (b, 1, v.width)), x], axis=1)
    pos = self.param("pos_embedding", P.param_init(nn.initializers.normal(v.width ** -0.5),
                                                   ("pos", "embed")),
                     (x.shape[1], v.width), jnp.float32)
    x = x + pos.astype(dtype)
    x = P.constrain(x, ("act_batch", "act_len", "act_embed"))
    if v.pre_norm:
      x = layer_norm(cfg, "ln_pre")(x)
    x = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)(x)
    return run_layers(EncoderLayer, v.depth, cfg, "layers", x, (None,),
                      num_heads=v.num_heads, mlp_dim=v.mlp_dim,
                      deterministic=self.deterministic)
