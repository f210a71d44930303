"""Products of activations with a weight (x . W), with a weight gradient that XLA:CPU runs fast.

The weight gradient dW = x^T . g contracts x over its leading (batch, sequence) axes. XLA:CPU
hands a product to YNNPACK only when the left operand's contracted axes are its last ones
(`IsDotSupportedByYnn` in XLA's `backends/cpu/ynn_support.cc`, jaxlib 0.10.2: "we don't
currently support generating the necessary transposes"); any other product runs in Eigen, which
took 1.9x as long on a (2080, 256) x (2080, 1024) weight gradient on one AVX2 core
(`benchmarks/results/README.md`). On CPU the gradient therefore copies x to (in, batch) first,
kept as a copy by an optimization barrier (XLA would fold a bare transpose back into the
product). TPUs and GPUs read either operand layout at full speed and get the plain
`lax.dot_general` (`lax.platform_dependent` picks the branch when the program is lowered).
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax


def linear(x: jax.Array, kernel: jax.Array, contracting: int = 1) -> jax.Array:
  """x (*batch, *in) . kernel (*in, *out) -> (*batch, *out), contracting the `contracting`
  trailing axes of x with the leading ones of kernel (an einsum "...d,dhk->...hk" has 1,
  "...hk,hkd->...d" has 2). Both operands in one dtype (the compute dtype); the result has it.
  The value and gradients are those of `lax.dot_general` on every backend."""
  return lax.platform_dependent(
      x, kernel, cpu=functools.partial(_cpu_product, contracting),
      default=functools.partial(_product, contracting))


def dot_general(lhs, rhs, dimension_numbers, precision=None,
                preferred_element_type: Optional[jnp.dtype] = None):
  """`lax.dot_general`'s signature, for `flax.linen.Dense(dot_general=...)`: products of the
  kind `linear` takes (no batch axes, lhs's trailing axes with rhs's leading ones, default
  precision and result type) go through it, any other to `lax.dot_general` unchanged."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  n = len(lhs_contract)
  if (lhs_batch or rhs_batch or precision is not None or preferred_element_type is not None
      or tuple(lhs_contract) != tuple(range(lhs.ndim - n, lhs.ndim))
      or tuple(rhs_contract) != tuple(range(n))):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
  return linear(lhs, rhs, n)


def _product(contracting, x, kernel):
  dims = ((tuple(range(x.ndim - contracting, x.ndim)), tuple(range(contracting))), ((), ()))
  return lax.dot_general(x, kernel, dims)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cpu_product(contracting, x, kernel):
  return _product(contracting, x, kernel)


def _cpu_product_fwd(contracting, x, kernel):
  return _product(contracting, x, kernel), (x, kernel)


def _cpu_product_bwd(contracting, residuals, g):
  x, kernel = residuals
  batch = x.ndim - contracting
  out = kernel.ndim - contracting
  # dx = g . kernel^T: g's trailing (out) axes with the kernel's; both already canonical.
  dx = lax.dot_general(g, kernel, ((tuple(range(batch, g.ndim)),
                                    tuple(range(contracting, kernel.ndim))), ((), ())))
  if x.size <= g.size:  # dW = x^T . g with x^T materialised: (*in, *batch) . (*batch, *out)
    x_t = _transposed(x, batch)
    dw = lax.dot_general(x_t, g, ((tuple(range(contracting, x_t.ndim)), tuple(range(batch))),
                                  ((), ())))
  else:  # dW^T = g^T . x (g is the smaller copy), then the kernel-sized transpose
    g_t = _transposed(g, batch)
    dw_t = lax.dot_general(g_t, x, ((tuple(range(out, g_t.ndim)), tuple(range(batch))),
                                    ((), ())))
    # (XLA would fold a bare transpose of the product back into it, swapping its operands.)
    dw = jnp.transpose(lax.optimization_barrier(dw_t),
                       tuple(range(out, dw_t.ndim)) + tuple(range(out)))
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


def _transposed(a, batch):
  """a (*batch, *rest) -> (*rest, *batch), as a copy of its own (see the module docstring)."""
  return lax.optimization_barrier(
      jnp.transpose(a, tuple(range(batch, a.ndim)) + tuple(range(batch))))

_cpu_product.defvjp(_cpu_product_fwd, _cpu_product_bwd)
