"""The ViT image encoder: patch embedding, optional class token, learned positions, blocks."""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from coca_jax.model import partitioning as P
from coca_jax.model.blocks import EncoderLayer, compute_dtype, layer_norm, run_layers
from coca_jax.model.config import ModelConfig


def sincos2d_table(grid: int, width: int, class_token: bool = False) -> np.ndarray:
  """float32 (grid * grid (+ 1), width): the 2-D sine-cosine position table of MAE (He et al.
  2021) and big_vision: a quarter of the width each for sin(x w_k), cos(x w_k), sin(y w_k),
  cos(y w_k), w_k = 10000^(-k / (width / 4)), x the column and y the row of a patch (row-major,
  as the patch tokens); a class token's row is zeros. ValueError when width % 4 != 0."""
  if width % 4:
    raise ValueError(f"the sincos2d position table needs a width divisible by 4, got {width}")
  rows, cols = np.mgrid[:grid, :grid]
  quarter = width // 4
  omega = 10000.0 ** (-np.arange(quarter) / quarter)
  x = cols.reshape(-1, 1) * omega
  y = rows.reshape(-1, 1) * omega
  table = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  if class_token:
    table = np.concatenate([np.zeros((1, width)), table])
  return table.astype(np.float32)


def _pos_embedding_init(v):
  if v.pos_embedding_init == "sincos2d":
    table = sincos2d_table(v.image_size // v.patch_size, v.width, v.class_token)
    return lambda key, shape, dtype=jnp.float32: jnp.asarray(table, dtype)
  return nn.initializers.normal(v.width ** -0.5)


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
    pos = self.param("pos_embedding", P.param_init(_pos_embedding_init(v), ("pos", "embed")),
                     (x.shape[1], v.width), jnp.float32)
    x = x + pos.astype(dtype)
    x = P.constrain(x, ("act_batch", "act_len", "act_embed"))
    if v.pre_norm:
      x = layer_norm(cfg, "ln_pre")(x)
    x = nn.Dropout(cfg.dropout_rate, deterministic=self.deterministic)(x)
    return run_layers(EncoderLayer, v.depth, cfg, "layers", x, (None,),
                      num_heads=v.num_heads, mlp_dim=v.mlp_dim,
                      deterministic=self.deterministic)
