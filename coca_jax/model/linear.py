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

Decoding multiplies every weight by a handful of rows (one per caption), so a step is bound by
how fast the weights are read. XLA:CPU's products of 2-16 rows read an (in, out) kernel at a
quarter to a third of memory bandwidth, whatever its layout (2-core AVX2 EPYC: 4.6 GB/s at 4
rows), whereas a multiply-and-sum over a copy stored (out, in), each output a sum along
contiguous memory, reads it at 9.8-13.2 GB/s for 2-8 rows (equal at 24; one row is a
matrix-vector product that XLA already runs at 18 GB/s; `benchmarks/results/README.md`).
So decoding's first step on CPU stores the text towers' kernels transposed in the Flax
collection TRANSPOSED_KERNELS (`coca_jax.inference.decode`), and `module_product` reads them
for products of FEW_ROWS rows: coca_ViT-B-32's decoding step at batch 4 went from 124 to 57
ms. Without the collection, and on TPU/GPU, every product is `linear`'s.
"""
import functools
import math
from typing import Optional

import flax.linen as nn
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


# A Flax collection: modules' kernels stored (out, in), for decoding's products of few rows.
TRANSPOSED_KERNELS = "transposed_kernels"
FEW_ROWS = (2, 16)  # the row counts (product of x's batch axes) that read those copies on CPU


def transposed_copy(module: nn.Module, name: str, make) -> Optional[jax.Array]:
  """`module`'s variable `name` in TRANSPOSED_KERNELS: made by `make()` (an (out, in) array,
  the compute dtype) when that collection is mutable (decoding's first step; never at init,
  where every collection is), read when present; None when it is neither (training,
  encoding, decoding on TPU/GPU)."""
  if ((module.is_mutable_collection(TRANSPOSED_KERNELS) and not module.is_initializing())
      or module.has_variable(TRANSPOSED_KERNELS, name)):
    return module.variable(TRANSPOSED_KERNELS, name, make).value
  return None


def row_count(x: jax.Array, contracting: int = 1) -> int:
  """The rows of a product of x (*batch, *in), any dtype: the product of its batch axes (int)."""
  return math.prod(x.shape[:x.ndim - contracting])


def few_rows(count: int) -> bool:
  """Whether a product of `count` rows reads the transposed copies (FEW_ROWS, on CPU)."""
  return FEW_ROWS[0] <= count <= FEW_ROWS[1]


def product_transposed(x: jax.Array, kernel_t: jax.Array, contracting: int = 1) -> jax.Array:
  """x (*batch, *in) . kernel_t (out, prod(in))^T -> (*batch, out) in x's dtype: on CPU a
  multiply-and-sum along kernel_t's contiguous rows, in float32 for any dtype (see the module
  docstring); elsewhere the product. No gradient is defined for it (decoding only)."""
  batch = x.shape[:x.ndim - contracting]
  rows = x.reshape(-1, kernel_t.shape[1])

  def multiply_and_sum(rows, kernel_t):
    y = jnp.sum(kernel_t[None].astype(jnp.float32) * rows[:, None, :].astype(jnp.float32),
                axis=-1)
    return y.astype(rows.dtype)

  y = lax.platform_dependent(rows, kernel_t, cpu=multiply_and_sum,
                             default=lambda rows, kernel_t: rows @ kernel_t.T)
  return y.reshape(batch + kernel_t.shape[:1])


def module_product(module: nn.Module, x: jax.Array, kernel: jax.Array, contracting: int = 1,
                   name: str = "kernel", with_copy: bool = True) -> jax.Array:
  """`linear(x, kernel, contracting)` for `module`'s kernel, except that with a
  TRANSPOSED_KERNELS copy of it (variable `name`, made here at decoding's first step: kernel
  (prod(in), prod(out)) transposed, in kernel's dtype) and FEW_ROWS rows of x it is
  `product_transposed` over that copy. x (*batch, *in) -> (*batch, *out), kernel's dtype
  (the compute dtype) for both; equal to `linear` up to float32 summation order.
  `with_copy=False`: always `linear`, no copy made or read (for products that decoding's
  later steps never run, whose copy nothing would read)."""
  n_in = math.prod(kernel.shape[:contracting])
  kernel_t = (transposed_copy(module, name, lambda: kernel.reshape(n_in, -1).T)
              if with_copy else None)
  if kernel_t is None or not few_rows(row_count(x, contracting)):
    return linear(x, kernel, contracting)
  y = product_transposed(x, kernel_t, contracting)
  return y.reshape(y.shape[:-1] + kernel.shape[contracting:])


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
