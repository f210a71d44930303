"""The transformer MLP: Dense, GELU, Dense."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from coca_jax.model import partitioning as P


class Mlp(nn.Module):
  """fc1 (width -> hidden_dim), GELU, fc2 (hidden_dim -> width): x (B, T, width) in `dtype`.

  GELU: exact (erf) as open_clip's, or the tanh approximation with `exact_gelu=False`.
  """
  hidden_dim: int
  exact_gelu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x (B, T, width), float -> (B, T, width) in `dtype`."""
    width = x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=P.param_init(nn.initializers.xavier_uniform(), ("embed", "mlp")),
                 bias_init=P.param_init(nn.initializers.normal(1e-6), ("mlp",)),
                 name="fc1")(x)
    x = P.constrain(x, ("act_batch", "act_len", "act_mlp"))
    x = nn.gelu(x, approximate=not self.exact_gelu)
    x = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=P.param_init(nn.initializers.xavier_uniform(), ("mlp", "embed")),
                 bias_init=P.param_init(nn.initializers.normal(1e-6), ("embed",)),
                 name="fc2")(x)
    return P.constrain(x, ("act_batch", "act_len", "act_embed"))
