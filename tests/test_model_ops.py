"""The model's hand-written operations against the library ones they replace: the weight
product with its CPU weight gradient and decoding's few-row products over transposed copies
(`coca_jax.model.linear`), layer normalisation with its closed-form gradient
(`coca_jax.model.layer_norm`), the exact GELU and the Dense layer (`coca_jax.model.mlp`).
Values and gradients must agree; the CPU weight gradient must actually reach YNNPACK, and
accelerators must get the plain product."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coca_jax.model.layer_norm import LayerNorm
from coca_jax.model import linear as linear_module
from coca_jax.model.linear import linear
from coca_jax.model.mlp import Dense, gelu

# (x shape, kernel shape, contracting axes): the forms the model uses. The first has the
# smaller x (its transpose is copied), the second the smaller gradient g, the third is
# "...hk,hkd->...d", the fourth a (in, 3, heads, head_dim) kernel.
PRODUCTS = [((4, 9, 16), (16, 40), 1), ((4, 9, 40), (40, 16), 1), ((3, 7, 4, 8), (4, 8, 24), 2),
            ((2, 5, 12), (12, 3, 2, 8), 1)]


def _reference(x, kernel, contracting):
  dims = ((tuple(range(x.ndim - contracting, x.ndim)), tuple(range(contracting))), ((), ()))
  return jax.lax.dot_general(x, kernel, dims)


def _loss(product, contracting):
  # A loss that weighs every output element differently, so a transposed gradient shows.
  def loss(x, kernel):
    y = product(x, kernel, contracting)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))
  return loss


@pytest.mark.parametrize("x_shape,kernel_shape,contracting", PRODUCTS)
def test_linear_equals_dot_general_with_its_gradients(x_shape, kernel_shape, contracting):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal(kernel_shape), jnp.float32)
  got = jax.jit(jax.value_and_grad(_loss(linear, contracting), argnums=(0, 1)))(x, kernel)
  want = jax.value_and_grad(_loss(_reference, contracting), argnums=(0, 1))(x, kernel)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


def test_dense_is_flax_dense():
  """mlp.Dense keeps nn.Dense's params (names, shapes, initial values) and output."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5)), jnp.float32)
  init = nn.initializers.normal(0.3)
  ours = Dense(4, kernel_init=init, bias_init=init)
  theirs = nn.Dense(4, kernel_init=init, bias_init=init)
  params = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, theirs.init(jax.random.key(0), x))
  np.testing.assert_array_equal(params["params"]["kernel"],
                                theirs.init(jax.random.key(0), x)["params"]["kernel"])
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-6)


@pytest.mark.parametrize("batch,few", [((1, 1), False), ((2, 1), True), ((4, 4), True),
                                       ((17, 1), False)])
def test_module_product_reads_the_transposed_copy_for_few_rows(batch, few):
  """With the TRANSPOSED_KERNELS collection mutable, the module stores its kernel (out, in);
  given back, products of 2-16 rows read that copy (a copy of zeros leaves the bias alone),
  other row counts the kernel; the values are linear's."""
  copies = linear_module.TRANSPOSED_KERNELS
  x = jnp.asarray(np.random.default_rng(1).standard_normal(batch + (5,)), jnp.float32)
  dense = Dense(3, kernel_init=nn.initializers.normal(1.0), bias_init=nn.initializers.ones)
  params = dense.init(jax.random.key(0), x)["params"]
  plain = dense.apply({"params": params}, x)
  made, collections = dense.apply({"params": params}, x, mutable=[copies])
  np.testing.assert_array_equal(collections[copies]["kernel"], params["kernel"].T)
  np.testing.assert_allclose(made, plain, rtol=1e-5, atol=1e-6)
  variables = {"params": params, **collections}
  np.testing.assert_allclose(dense.apply(variables, x), plain, rtol=1e-5, atol=1e-6)
  zeros = {"params": params, copies: {"kernel": jnp.zeros((3, 5))}}
  expected = jnp.ones_like(plain) if few else plain
  np.testing.assert_allclose(dense.apply(zeros, x), expected, rtol=1e-5, atol=1e-6)


def test_product_over_a_transposed_copy_contracts_several_axes():
  """"...hk,hkd->...d" (the attention output) over its (d, h*k) copy."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 1, 4, 8)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((4, 8, 24)), jnp.float32)
  got = linear_module.product_transposed(x, kernel.reshape(32, 24).T, 2)
  np.testing.assert_allclose(got, _reference(x, kernel, 2), rtol=1e-5, atol=1e-5)


def _entry_computation(hlo_text):
  start = hlo_text.index("\nENTRY")
  return hlo_text[start:hlo_text.index("\n}", start)]


@pytest.mark.parametrize("x_shape,kernel_shape,contracting", PRODUCTS[:2])
def test_cpu_weight_gradient_is_not_left_to_eigen(x_shape, kernel_shape, contracting):
  """XLA:CPU runs a product that is not in YNNPACK's canonical form as a plain `dot` (Eigen):
  with the transpose folded back into the product (as XLA would do without the barrier), the
  weight gradient is one; with `linear` every product is inside a fusion."""
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU's products")
  x = jax.ShapeDtypeStruct((64,) + x_shape[1:], jnp.float32)
  kernel = jax.ShapeDtypeStruct(kernel_shape, jnp.float32)
  entry = lambda product: _entry_computation(jax.jit(jax.grad(
      _loss(product, contracting), argnums=1)).lower(x, kernel).compile().as_text())
  plain_dot = re.compile(r"= f32\[[0-9,]*\]\S* dot\(")
  assert plain_dot.search(entry(_reference)), "the plain weight gradient should be a dot"
  assert not plain_dot.search(entry(linear))


def test_accelerators_get_the_plain_product():
  x, kernel = jnp.ones((4, 9, 16)), jnp.ones((16, 40))
  grad = jax.jit(jax.grad(_loss(linear, 1), argnums=(0, 1)))
  tpu = grad.trace(x, kernel).lower(lowering_platforms=("tpu",)).as_text()
  cpu = grad.trace(x, kernel).lower(lowering_platforms=("cpu",)).as_text()
  assert "optimization_barrier" not in tpu
  assert "optimization_barrier" in cpu


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_equals_flax_with_its_gradients(dtype):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 7, 32)) * 3 + 1, dtype)
  ours, flax_ln = LayerNorm(epsilon=1e-5, dtype=dtype), nn.LayerNorm(epsilon=1e-5, dtype=dtype)
  params = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, nn.unbox(params)) == jax.tree.map(
      jnp.shape, flax_ln.init(jax.random.key(0), x))
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), p.dtype),
                        nn.unbox(params))
  weights = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

  def loss(module):
    return lambda p, x: jnp.sum(module.apply(p, x).astype(jnp.float32) * weights)
  got = jax.jit(jax.value_and_grad(loss(ours), argnums=(0, 1)))(params, x)
  want = jax.value_and_grad(loss(flax_ln), argnums=(0, 1))(params, x)
  tolerance = 1e-4 if dtype == jnp.float32 else 5e-2
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                               rtol=tolerance, atol=tolerance)


def test_gelu_equals_jax_exact_gelu_with_its_gradient():
  x = jnp.linspace(-10.0, 10.0, 20001, dtype=jnp.float32)
  np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=0, atol=2e-6)
  np.testing.assert_allclose(jax.grad(lambda x: gelu(x).sum())(x),
                             jax.grad(lambda x: jax.nn.gelu(x, approximate=False).sum())(x),
                             rtol=0, atol=2e-6)
  y = gelu(x.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), gelu(x), rtol=1e-2, atol=1e-2)


def test_gelu_is_torchs():
  torch = pytest.importorskip("torch")
  x = np.linspace(-10.0, 10.0, 20001, dtype=np.float32)
  np.testing.assert_allclose(gelu(jnp.asarray(x)), torch.nn.functional.gelu(
      torch.from_numpy(x)).numpy(), rtol=0, atol=2e-6)
