"""Layer normalisation (Ba et al. 2016) with its gradient written out.

The params are flax.linen.LayerNorm's ("scale", "bias", float32, shape (features,)), so
checkpoints and converted open_clip weights load unchanged. The statistics are two-pass
(mean, then the mean square of x - mean), as torch's; flax's default is one-pass
(E[x^2] - E[x]^2). The backward pass is the closed form

  dx = rstd * (g' - mean(g') - x_hat * mean(g' * x_hat)),  g' = g * scale,
  dscale = sum(g * x_hat),  dbias = sum(g)   (sums over every axis but the last),

two row reductions where autodiff of the forward pass makes several passes over x (on one CPU
core, a (32, 65, 256) float32 array: 0.82 against flax's 1.60 ms for forward and backward,
`benchmarks/results/README.md`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from coca_jax.model import partitioning as P


class LayerNorm(nn.Module):
  """x (..., features), any float dtype -> the same shape in `dtype`; statistics in float32.

  Attributes:
    epsilon: added to the variance (open_clip: 1e-5).
    dtype: the output's dtype.
  """
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", P.param_init(nn.initializers.ones, ("norm",)), (features,),
                       jnp.float32)
    bias = self.param("bias", P.param_init(nn.initializers.zeros, ("norm",)), (features,),
                      jnp.float32)
    return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


def layer_norm(x, scale, bias, epsilon: float = 1e-5):
  """(x - mean) / sqrt(var + epsilon) * scale + bias over x's last axis: x (..., F) any float
  dtype, scale and bias (F,) float32 -> (..., F) float32."""
  return _layer_norm(epsilon, x, scale, bias)


def _normalized(x, epsilon):
  """x (..., F) -> (x_hat float32 (..., F), rstd float32 (..., 1))."""
  x = x.astype(jnp.float32)
  centred = x - x.mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + epsilon)
  return centred * rstd, rstd


def _forward_with_residuals(epsilon, x, scale, bias):
  x_hat, rstd = _normalized(x, epsilon)
  return x_hat * scale + bias, (x, scale, rstd)


def _forward(epsilon, x, scale, bias):
  return _forward_with_residuals(epsilon, x, scale, bias)[0]


def _backward(epsilon, residuals, g):
  del epsilon
  x, scale, rstd = residuals
  x = x.astype(jnp.float32)
  x_hat = (x - x.mean(-1, keepdims=True)) * rstd
  g = g.astype(jnp.float32)
  g_scaled = g * scale
  dx = rstd * (g_scaled - g_scaled.mean(-1, keepdims=True)
               - x_hat * (g_scaled * x_hat).mean(-1, keepdims=True))
  batch_axes = tuple(range(x.ndim - 1))
  return dx.astype(residuals[0].dtype), (g * x_hat).sum(batch_axes), g.sum(batch_axes)


_layer_norm = jax.custom_vjp(_forward, nondiff_argnums=(0,))
_layer_norm.defvjp(_forward_with_residuals, _backward)
