"""Evaluators in-process: a known zero-shot answer on a folder of images per class, every
example counted exactly once whatever the device count (the split does not divide the batch),
generative zero-shot equal to a brute-force likelihood ranking."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from coca_jax import tokenizers
from coca_jax.parallel import sharding
from coca_jax.data import preprocess
from coca_jax.evals import build, zero_shot
from coca_jax.model import create_model
from train_fixtures import micro_config

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}
SPLIT = "coca_shapes:validation[:37]"  # 37 examples: not a multiple of any batch below


class ColourModel:
  """A stand-in CoCa whose embeddings are known: an image's is its normalised mean colour, a
  text's the colour it names."""

  def __init__(self, tokenizer):
    mean, std = preprocess.mean_std("openai_clip")
    self.ids = jnp.asarray([tokenizer.tokenize(c)[0] for c in COLOURS])
    self.vectors = jnp.asarray([(np.asarray(c) / 255 - mean) / std for c in COLOURS.values()],
                               jnp.float32)
    self.cfg = types.SimpleNamespace(text=types.SimpleNamespace(pad_id=tokenizer.pad_id))

  def apply(self, variables, x, method=None):
    del variables
    if method == "encode_image":
      e = x.mean(axis=(1, 2))
    else:
      e = (x[..., None] == self.ids).sum(axis=1).astype(jnp.float32) @ self.vectors
      e = e + 1e-3  # a prompt cut before its colour word: a tiny vector, no class
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True), None


def _folder(root, counts, misplaced=()):
  """root/<colour>/<k>.png of that colour; `misplaced` (colour, folder) pairs add an image of
  one colour into another colour's folder."""
  for name, n in counts.items():
    (root / name).mkdir(parents=True, exist_ok=True)
    for k in range(n):
      Image.new("RGB", (20, 24), COLOURS[name]).save(root / name / f"{k}.png")
  for k, (colour, folder) in enumerate(misplaced):
    Image.new("RGB", (20, 24), COLOURS[colour]).save(root / folder / f"odd{k}.png")


def _config(**evals):
  config = micro_config()
  config.evals.update(zeroshot=False, val_loss=False, captions=False)
  with config.unlocked():
    config.evals.update(evals)
  return config


def test_zero_shot_known_answer_on_a_folder_of_images(tmp_path):
  _folder(tmp_path, {"blue": 2, "green": 2, "red": 2}, misplaced=[("green", "red")])
  config = _config(zeroshot=True, batch_size=8,
                   datasets=dict(zeroshot=f"folder:{tmp_path}", retrieval="", captions=""))
  tok = tokenizers.load(config.data.tokenizer)
  mesh = sharding.make_mesh({"data": -1})
  evaluator, = build(config, ColourModel(tok), mesh, tok)
  assert evaluator.class_names == ("blue", "green", "red")
  assert len(evaluator.templates) == 10  # CLIP's short list for an unknown dataset
  r = evaluator.run({})
  # 7 images; the green one in red/ is classified green: 6/7 right, all 3 classes in the top 5.
  assert r["zeroshot/examples"] == 7
  assert r["zeroshot/top1"] == pytest.approx(6 / 7)
  assert r["zeroshot/top5"] == 1.0
  assert r["zeroshot/chance"] == pytest.approx(1 / 3)


def _micro_model_and_params():
  config = micro_config()
  model = create_model(config.model)
  size, length = config.model.vision.image_size, config.data.text_length
  params = model.init(jax.random.key(1), jnp.zeros((1, size, size, 3)),
                      jnp.zeros((1, length), jnp.int32))["params"]
  params = nn.unbox(params)
  return model, params


def _run_all(devices):
  config = _config(zeroshot=True, retrieval=True, captions=True, batch_size=16,
                   num_caption_examples=0, gallery=0,
                   datasets=dict(zeroshot=SPLIT, retrieval=SPLIT, captions=SPLIT))
  tok = tokenizers.load(config.data.tokenizer)
  model, params = _micro_model_and_params()
  mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:devices])
  results = {}
  with jax.set_mesh(mesh):
    for evaluator in build(config, model, mesh, tok):
      results.update(evaluator.run(params))
  return results


def test_every_example_counted_once_on_any_device_count():
  one, eight = _run_all(1), _run_all(8)
  for r in (one, eight):
    assert r["zeroshot/examples"] == 37
    assert r["retrieval/images"] == 37 and r["retrieval/texts"] == 4 * 37
    assert r["captions/num_examples"] == 37
  for key, value in one.items():
    if isinstance(value, float):
      assert eight[key] == pytest.approx(value, abs=1e-6), key
  assert eight["captions/examples"] == one["captions/examples"]


def test_generative_zero_shot_equals_brute_force_likelihoods():
  config = _config(generative_zeroshot=True, batch_size=8, generative_class_chunk=5,
                   datasets=dict(zeroshot="coca_shapes:validation[:12]", retrieval="",
                                 captions=""))
  tok = tokenizers.load(config.data.tokenizer)
  model, params = _micro_model_and_params()
  mesh = sharding.make_mesh({"data": -1})
  evaluator, = build(config, model, mesh, tok)
  r = evaluator.run(params)
  # Brute force: every (image, class) pair through the whole model, one image at a time.
  prompts = jnp.asarray(tok.encode([evaluator.generative_template.format(n)
                                    for n in evaluator.class_names], config.data.text_length))
  hit1 = hit5 = 0
  for batch in evaluator.eval_iter:
    for image, label, valid in zip(batch["images"], batch["label"], batch["mask"]):
      if not valid:
        continue
      _, tokens = model.apply({"params": params}, image[None], method="encode_image")
      tokens = jnp.repeat(tokens, len(prompts), axis=0)
      logits = model.apply({"params": params}, prompts, tokens, method="decode")
      logp = jax.nn.log_softmax(logits[:, :-1])
      picked = jnp.take_along_axis(logp, prompts[:, 1:, None], axis=-1)[..., 0]
      score = np.asarray((picked * (prompts[:, 1:] != tok.pad_id)).sum(-1))
      order = np.argsort(-score)
      hit1 += order[0] == label
      hit5 += label in order[:5]
  assert r["zeroshot_generative/examples"] == 12
  assert r["zeroshot_generative/top1"] == pytest.approx(hit1 / 12)
  assert r["zeroshot_generative/top5"] == pytest.approx(hit5 / 12)


def test_prompt_embeddings_sharded_equal_unsharded():
  model, params = _micro_model_and_params()
  tok = tokenizers.load("embedded")
  tokens = tok.encode([f"a photo of a {c} circle" for c in "abcdefghijklm"], 16)
  mesh = sharding.make_mesh({"data": -1})
  sharded = zero_shot.encode_texts(model, params, tokens, batch_size=8, mesh=mesh)
  plain = zero_shot.encode_texts(model, params, tokens, batch_size=8)
  np.testing.assert_allclose(sharded, plain, atol=1e-5)
  assert sharded.shape == (13, 32)


def test_repeated_text_encoding_and_gathers_compile_once():
  """Evaluators encode texts for every caption batch and at every evaluation, and gather
  results for every batch: after the first round, an equal model on the same mesh compiles
  nothing (a fresh jit per call compiled again each time: most of the caption evaluation's
  time on the main job)."""
  from coca_jax.evals import common
  model, params = _micro_model_and_params()
  tok = tokenizers.load("embedded")
  mesh = sharding.make_mesh({"data": -1})
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(event)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  for words in ("red", "green", "blue"):
    if words == "green":
      compiles.clear()  # the first round compiles; the later ones must not
    tokens = tok.encode([f"a {words} circle {i}" for i in range(6)], 16)
    again = create_model(micro_config().model) if words == "blue" else model  # equal model
    zero_shot.encode_texts(again, params, tokens, batch_size=8, mesh=mesh)
    common.gather({"x": jnp.ones((8, 3)) * len(words)}, mesh)
  assert not compiles


def test_validation_losses_leave_out_padded_rows_and_follow_the_chunked_loss():
  """A batch whose last row is padding (mask False) gives the losses of its real rows alone,
  and a model built with caption_loss_chunks gives the same losses through its chunked path,
  never making the whole logits."""
  from coca_jax.evals.validation import ValidationLossEvaluator  # pylint: disable=import-outside-toplevel
  from coca_jax.train import losses  # pylint: disable=import-outside-toplevel
  import model_fixtures  # pylint: disable=import-outside-toplevel
  images = model_fixtures.make_images(4)
  text = model_fixtures.make_text([5, 7, 12, 2])
  text = text.at[3].set(model_fixtures.PAD)  # the padded example: all padding
  mask = np.array([True, True, True, False])
  model = create_model(model_fixtures.config(text__vocab_size=80))  # unlike any other width
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), images, text))["params"]
  expected = losses.coca_loss(model.apply({"params": params}, images[:3], text[:3]), text[:3],
                              pad_id=model_fixtures.PAD)
  mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
  batch = {"images": np.asarray(images), "text": np.asarray(text), "mask": mask}
  for chunks in (0, 2):
    chunked = create_model(model_fixtures.config(text__vocab_size=80, caption_loss_chunks=chunks))
    evaluator = ValidationLossEvaluator(chunked, mesh, [batch], pad_id=model_fixtures.PAD,
                                        contrastive_weight=1.0, caption_weight=2.0)
    result = evaluator.run(params)
    g = sharding.global_batch(batch, mesh)
    program = evaluator._losses.lower(params, g["images"], g["text"], g["mask"]).compile()  # pylint: disable=protected-access
    # whole logits (batch, length - 1, vocab) exist only without chunks
    assert ("f32[4,11,80]" in program.as_text()) == (chunks == 0), chunks
    for name in ("contrastive", "caption", "total"):
      np.testing.assert_allclose(result[f"val/{name}"], float(expected[name]), rtol=1e-5,
                                 err_msg=f"{name}, caption_loss_chunks={chunks}")
