"""The model on a (data=2, fsdp=2, tensor=2) mesh of 8 simulated devices: params are born
sharded by the logical rules, and the outputs equal the single-device ones."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import coca_jax
from coca_jax.train import losses
from coca_jax.parallel import sharding
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


def test_fsdp_zero_takes_the_largest_size_that_divides_the_widths():
  """fsdp 0 (the paper configs' mesh): as wide as the devices and every width allow, data the
  rest; a model whose widths share no factor with the devices gets fsdp 1, not a mesh that
  would leave its params replicated."""
  devices = jax.devices()  # 8 simulated CPU devices
  auto = dict(slice=1, data=-1, fsdp=0, tensor=1)
  mesh = sharding.make_mesh(auto, devices=devices, fsdp_divides=(768, 512, 768))
  assert dict(mesh.shape) == dict(slice=1, data=1, fsdp=8, tensor=1)
  mesh = sharding.make_mesh(auto, devices=devices, fsdp_divides=(12, 32, 64))
  assert dict(mesh.shape) == dict(slice=1, data=2, fsdp=4, tensor=1)
  mesh = sharding.make_mesh(dict(auto, tensor=2), devices=devices, fsdp_divides=(96, 96, 96))
  assert dict(mesh.shape) == dict(slice=1, data=1, fsdp=4, tensor=2)
  mesh = sharding.make_mesh(auto, devices=devices, fsdp_divides=(7, 7, 7))
  assert dict(mesh.shape) == dict(slice=1, data=8, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match="widths"):
    sharding.make_mesh(auto, devices=devices)
