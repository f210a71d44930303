"""The model on a (data=2, fsdp=2, tensor=2) mesh of 8 simulated devices: params are born
sharded by the logical rules, and the outputs equal the single-device ones."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

import coca_jax
from coca_jax import losses, sharding
from model_fixtures import MICRO, make_images, make_text


def test_sharded_forward_and_loss_equal_single_device():
  model = coca_jax.create_model(MICRO)
  images, text = make_images(8), make_text([5, 12, 7, 9, 6, 10, 8, 11])
  key = jax.random.key(0)
  reference = nn.unbox(jax.jit(model.init)(key, images, text))

  def loss_fn(variables, images, text):
    out = model.apply(variables, images, text)
    return out, losses.coca_loss(out, text, pad_id=0)["total"]

  ref_out, ref_loss = jax.jit(loss_fn)(reference, images, text)

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  abstract = jax.eval_shape(model.init, key, images, text)
  param_shardings = sharding.logical_shardings(abstract, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    variables = jax.jit(model.init, out_shardings=param_shardings)(key, images, text)
    batch = sharding.batch_sharding(mesh, 4)
    images_s = jax.device_put(images, batch)
    text_s = jax.device_put(text, sharding.batch_sharding(mesh, 2))
    out, loss = jax.jit(loss_fn)(variables, images_s, text_s)

  params = variables["params"]
  fc1 = params["text"]["layers_0"]["block"]["mlp"]["fc1"]["kernel"].value
  assert fc1.sharding.spec == PartitionSpec("fsdp", "tensor")
  query = params["visual"]["layers_1"]["block"]["attn"]["query"]["kernel"].value
  assert query.sharding.spec == PartitionSpec("fsdp", "tensor", None)
  vocab = params["decoder"]["proj"].value
  assert vocab.sharding.spec == PartitionSpec("fsdp", "tensor")
  assert vocab.addressable_shards[0].data.shape == (16, 32)  # (32, 64) split 2 x 2

  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for key_ in ref_out:
    np.testing.assert_allclose(out[key_], ref_out[key_], atol=1e-5, err_msg=key_)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               nn.unbox(variables), reference)
