"""The losses against a NumPy reference, including padding and the global batch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from coca_jax.train import losses
from coca_jax.parallel import sharding
from coca_jax.model import create_model


def np_log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_contrastive(img, txt, scale):
  logits = scale * img @ txt.T
  n = len(img)
  i2t = -np_log_softmax(logits)[np.arange(n), np.arange(n)].mean()
  t2i = -np_log_softmax(logits.T)[np.arange(n), np.arange(n)].mean()
  return (i2t + t2i) / 2


def np_caption(logits, labels, pad):
  logp = np_log_softmax(logits)
  total, count = 0.0, 0
  for b in range(labels.shape[0]):
    for t in range(labels.shape[1]):
      if labels[b, t] != pad:
        total -= logp[b, t, labels[b, t]]
        count += 1
  return total / count


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_contrastive_matches_numpy():
  rng = np.random.default_rng(0)
  img, txt = unit(rng.normal(size=(6, 8))), unit(rng.normal(size=(6, 8)))
  got = losses.contrastive_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
                                14.3)
  np.testing.assert_allclose(got, np_contrastive(img, txt, 14.3), rtol=1e-5)


def test_contrastive_with_a_mask_is_the_loss_of_the_real_examples():
  """Evaluation's padded last batch: masked-out rows are neither anchors nor negatives,
  whatever their embeddings (here copies of a real one, the hardest negatives)."""
  rng = np.random.default_rng(2)
  img, txt = unit(rng.normal(size=(6, 8))), unit(rng.normal(size=(6, 8)))
  img[4:], txt[4:] = img[0], txt[1]
  mask = np.array([True, True, True, True, False, False])
  got = losses.contrastive_loss(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
                                14.3, example_mask=jnp.asarray(mask))
  np.testing.assert_allclose(got, np_contrastive(img[:4], txt[:4], 14.3), rtol=1e-5)
  every = losses.contrastive_loss(jnp.asarray(img), jnp.asarray(txt), 14.3,
                                  example_mask=jnp.ones(6, bool))
  np.testing.assert_allclose(every, np_contrastive(img, txt, 14.3), rtol=1e-5)


def test_caption_matches_numpy_with_padding():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
  labels = rng.integers(1, 11, size=(3, 7))
  labels[0, 4:] = 0
  labels[2, 1:] = 0
  got = losses.caption_loss(jnp.asarray(logits), jnp.asarray(labels), pad_id=0)
  np.testing.assert_allclose(got, np_caption(logits, labels, 0), rtol=1e-5)
  # Padding really is ignored: changing logits at padded positions changes nothing.
  logits2 = logits.copy()
  logits2[0, 5] += 100.0
  assert losses.caption_loss(jnp.asarray(logits2), jnp.asarray(labels), 0) == got


def test_coca_loss_shifts_and_weights():
  rng = np.random.default_rng(2)
  text = np.array([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]])
  out = {"image_embed": jnp.asarray(unit(rng.normal(size=(2, 4))), jnp.float32),
         "text_embed": jnp.asarray(unit(rng.normal(size=(2, 4))), jnp.float32),
         "logits": jnp.asarray(rng.normal(size=(2, 4, 9)), jnp.float32),
         "logit_scale": jnp.float32(10.0)}
  got = losses.coca_loss(out, jnp.asarray(text), pad_id=0)
  con = np_contrastive(np.asarray(out["image_embed"]), np.asarray(out["text_embed"]), 10.0)
  cap = np_caption(np.asarray(out["logits"]), text[:, 1:], 0)
  np.testing.assert_allclose(got["contrastive"], con, rtol=1e-5)
  np.testing.assert_allclose(got["caption"], cap, rtol=1e-5)
  np.testing.assert_allclose(got["total"], con + 2 * cap, rtol=1e-5)

  # Logits for every input position (the model's `decode`) are refused, not misaligned.
  whole = dict(out, logits=jnp.asarray(rng.normal(size=(2, 5, 9)), jnp.float32))
  with pytest.raises(ValueError, match="length - 1"):
    losses.coca_loss(whole, jnp.asarray(text), pad_id=0)


def test_contrastive_spans_the_global_batch_when_sharded():
  """With the batch split over 8 devices, every image is contrasted with all 16 texts."""
  rng = np.random.default_rng(3)
  img, txt = unit(rng.normal(size=(16, 8))), unit(rng.normal(size=(16, 8)))
  mesh = sharding.make_mesh((2, 4, 1))
  batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
  img_s = jax.device_put(jnp.asarray(img, jnp.float32), batch)
  txt_s = jax.device_put(jnp.asarray(txt, jnp.float32), batch)
  assert len(img_s.sharding.device_set) == 8
  got = jax.jit(losses.contrastive_loss)(img_s, txt_s, 20.0)
  np.testing.assert_allclose(got, np_contrastive(img, txt, 20.0), rtol=1e-5)
  # A per-device loss (2 examples each) would differ: make sure the test can tell.
  local = np.mean([np_contrastive(img[i:i + 2], txt[i:i + 2], 20.0) for i in range(0, 16, 2)])
  assert abs(local - float(got)) > 1e-2


def test_cross_entropy_gradient_matches_optax():
  rng = np.random.default_rng(4)
  logits = jnp.asarray(rng.normal(size=(2, 5, 13)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 13, size=(2, 5)))
  weights = jnp.asarray(rng.uniform(size=(2, 5)), jnp.float32)
  ours = lambda x: (losses.token_cross_entropy(x, labels) * weights).sum()
  ref = lambda x: (optax.softmax_cross_entropy_with_integer_labels(x, labels) * weights).sum()
  np.testing.assert_allclose(ours(logits), ref(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(ref)(logits), atol=1e-6)


def test_bfloat16_logits_keep_their_dtype_and_a_float32_loss():
  rng = np.random.default_rng(5)
  logits32 = jnp.asarray(rng.normal(size=(2, 6, 300)) * 4, jnp.float32)
  logits16 = logits32.astype(jnp.bfloat16)
  labels = jnp.asarray(rng.integers(1, 300, size=(2, 6)))
  loss = lambda x: losses.caption_loss(x, labels, pad_id=0)
  value, grad = jax.value_and_grad(loss)(logits16)
  assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
  # The same as float32 arithmetic on the bfloat16 values (the log-sum-exp is float32).
  np.testing.assert_allclose(value, loss(logits16.astype(jnp.float32)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad, np.float32),
                             jax.grad(loss)(logits16.astype(jnp.float32)), atol=1e-3)


@pytest.mark.parametrize("tied", [False, True])
def test_chunked_caption_loss_matches_whole_logits(tied):
  """caption_loss_chunks (3 chunks: not a divisor of the 16 positions) gives the same loss
  and gradients as the whole logits."""
  model_config = dict(
      vision=dict(image_size=16, patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64),
      pooler=dict(layout="cascade", num_queries=4, num_heads=2),
      text=dict(vocab_size=50, context_length=16, width=32, depth=1, num_heads=2, mlp_dim=64,
                pad_id=0, eos_id=3),
      decoder=dict(depth=1, num_heads=2, mlp_dim=64, tie_embeddings=tied), embed_dim=32)
  whole = create_model(model_config)
  chunked = create_model(dict(model_config, caption_loss_chunks=3))
  rng = np.random.default_rng(6)
  images = jnp.asarray(rng.normal(size=(3, 16, 16, 3)), jnp.float32)
  text = rng.integers(4, 50, size=(3, 16))
  text[0, 9:], text[1, 15:] = 0, 0
  text = jnp.asarray(text, jnp.int32)
  params = jax.jit(whole.init)(jax.random.key(0), images, text)["params"]

  def value_and_grad(model):  # jitted: op by op, the two models took over a minute on CPU
    return jax.jit(jax.value_and_grad(lambda p, w: losses.coca_loss(
        model.apply({"params": p}, images, text), text, pad_id=0, example_weights=w)["total"]))
  whole_grad, chunked_grad = value_and_grad(whole), value_and_grad(chunked)
  # Also with per-example caption weights (a dataset's caption_weight), one of them 0.
  for weights in (None, jnp.asarray([1.0, 0.0, 0.5])):
    value, grads = whole_grad(params, weights)
    value_c, grads_c = chunked_grad(params, weights)
    np.testing.assert_allclose(value_c, value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads_c, grads)


def test_caption_weights_give_a_weighted_token_mean():
  """Example weights w: sum_b w_b sum_t ce_bt / sum_b w_b n_b (n_b: example b's labels that
  are not padding); weight 0 leaves an example out as if it were not in the batch."""
  rng = np.random.default_rng(7)
  logits = rng.normal(size=(3, 6, 11)).astype(np.float32)
  labels = rng.integers(1, 11, size=(3, 6))
  labels[1, 3:] = 0
  w = np.array([0.5, 2.0, 0.0], np.float32)
  ce = -np.take_along_axis(np_log_softmax(logits), labels[..., None], -1)[..., 0]
  mask = labels != 0
  want = (ce * mask * w[:, None]).sum() / (mask * w[:, None]).sum()
  got = losses.caption_loss_sum(jnp.asarray(logits), jnp.asarray(labels), 0, jnp.asarray(w))
  np.testing.assert_allclose(got[0] / got[1], want, rtol=1e-5)
  kept = losses.caption_loss(jnp.asarray(logits[:2]), jnp.asarray(labels[:2]), 0)
  only = losses.caption_loss_sum(jnp.asarray(logits), jnp.asarray(labels), 0,
                                 jnp.asarray([1.0, 1.0, 0.0]))
  np.testing.assert_allclose(only[0] / only[1], kept, rtol=1e-6)
  text = np.concatenate([np.full((3, 1), 2), labels], axis=1)
  assert float(losses.caption_loss_count(jnp.asarray(text), 0, jnp.asarray(w))) == float(
      (mask * w[:, None]).sum())


def test_embedding_distillation_known_values_and_no_gradient_to_the_reference():
  """1 - cos per example, averaged over the batch, image and text halves averaged: equal
  embeddings 0, orthogonal 1, opposite 2; the reference gets no gradient."""
  e = jnp.eye(3)
  assert float(losses.embedding_distillation(e, e, e, e)) == 0.0
  orthogonal = jnp.roll(e, 1, axis=0)
  assert float(losses.embedding_distillation(e, e, orthogonal, e)) == pytest.approx(0.5)
  assert float(losses.embedding_distillation(e, -e, orthogonal, e)) == pytest.approx(1.5)
  img, ref_img = unit(np.random.RandomState(0).randn(2, 2, 5))
  txt, ref_txt = unit(np.random.RandomState(1).randn(2, 2, 5))
  want = ((1 - (img * ref_img).sum(-1)).mean() + (1 - (txt * ref_txt).sum(-1)).mean()) / 2
  got = losses.embedding_distillation(img, txt, ref_img, ref_txt)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  grads = jax.grad(losses.embedding_distillation, argnums=(2, 3))(img, txt, ref_img, ref_txt)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)
