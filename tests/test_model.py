"""Properties of the CoCa model that plausible bugs would break."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import coca_jax
from coca_jax.train import losses
from coca_jax.model import layer_stacking
from model_fixtures import MICRO, MICRO_OPEN_CLIP, config, make_images, make_text


def init_params(cfg, seed=0):
  model = coca_jax.create_model(cfg)
  c = model.cfg
  images = jnp.zeros((1, c.vision.image_size, c.vision.image_size, 3))
  text = jnp.zeros((1, c.text.context_length), jnp.int32)
  return model, nn.unbox(jax.jit(model.init)(jax.random.key(seed), images, text))


@pytest.fixture(scope="module")
def paper():
  return init_params(MICRO)


@pytest.fixture(scope="module")
def open_clip_layout():
  return init_params(MICRO_OPEN_CLIP)


def forward(model):
  return jax.jit(model.apply)


@pytest.mark.parametrize("layout", ["cascade", "parallel", "single"])
def test_layouts_shapes(layout):
  model, variables = init_params(config(pooler__layout=layout))
  out = forward(model)(variables, make_images(3), make_text([5, 12, 7]))
  n_tokens = 7 if layout == "single" else 8
  _, tokens = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))(
      variables, make_images(3))
  assert tokens.shape == (3, n_tokens, 32)
  assert out["image_embed"].shape == out["text_embed"].shape == (3, 32)
  assert out["logits"].shape == (3, 11, 64)  # the last input position is not decoded
  np.testing.assert_allclose(jnp.linalg.norm(out["image_embed"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(out["text_embed"], axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)


def test_layouts_differ_in_what_the_contrastive_pooler_sees():
  """cascade and parallel share every param shape but must not give the same embedding."""
  cascade, variables = init_params(config(pooler__layout="cascade"))
  parallel = coca_jax.create_model(config(pooler__layout="parallel"))
  a = cascade.apply(variables, make_images(2), method=cascade.encode_image)[0]
  b = parallel.apply(variables, make_images(2), method=parallel.encode_image)[0]
  assert not np.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("fixture", ["paper", "open_clip_layout"])
def test_causality(fixture, request):
  """Changing token t changes no unimodal state and no logit at positions before t."""
  model, variables = request.getfixturevalue(fixture)
  images = make_images(1)
  text = make_text([12])
  image_tokens = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))(
      variables, images)[1]
  text_states = jax.jit(lambda v, t: model.apply(v, t, method=model.encode_text)[1])
  decode = jax.jit(lambda v, t: model.apply(v, t, image_tokens, method=model.decode))
  base_states, base_logits = text_states(variables, text), decode(variables, text)
  for t in (3, 7, 11):
    changed = text.at[0, t].set(text[0, t] % 60 + 4 if text[0, t] != 0 else 5)
    states, logits = text_states(variables, changed), decode(variables, changed)
    np.testing.assert_array_equal(states[:, :t], base_states[:, :t])
    np.testing.assert_array_equal(logits[:, :t], base_logits[:, :t])
    assert not np.allclose(logits[:, t], base_logits[:, t])


@pytest.mark.parametrize("fixture", ["paper", "open_clip_layout"])
def test_training_logits_skip_only_the_last_position(fixture, request):
  """The training forward pass does not decode the last input position (it predicts nothing,
  as in open_clip): its logits are `decode`'s for every other position."""
  model, variables = request.getfixturevalue(fixture)
  images, text = make_images(2), make_text([12, 5])
  out = forward(model)(variables, images, text)
  image_tokens = model.apply(variables, images, method=model.encode_image)[1]
  every = model.apply(variables, text, image_tokens, method=model.decode)
  assert out["logits"].shape == (2, text.shape[1] - 1, every.shape[-1])
  np.testing.assert_allclose(out["logits"], every[:, :-1], atol=2e-5)
  with pytest.raises(ValueError, match="at least 2 tokens"):
    model.apply(variables, images, text[:, :1])


def test_tokens_after_end_token_are_ignored(paper):
  """Paper layout: the text embedding and real-position logits ignore what follows EOS."""
  model, variables = paper
  text = make_text([6, 6])
  garbage = text.at[1, 6:].set(jnp.arange(6) + 10)  # same padded length, junk after EOS
  out = forward(model)(variables, make_images(2), text)
  out2 = forward(model)(variables, make_images(2), garbage)
  np.testing.assert_allclose(out2["text_embed"][1], out["text_embed"][1], atol=1e-6)
  np.testing.assert_allclose(out2["logits"][1, :6], out["logits"][1, :6], atol=1e-6)


def test_text_embedding_depends_on_every_real_token(paper):
  model, variables = paper
  text = make_text([8])
  e1 = model.apply(variables, text, method=model.encode_text)[0]
  e2 = model.apply(variables, text.at[0, 1].set(text[0, 1] % 60 + 5),
                   method=model.encode_text)[0]
  assert not np.allclose(e1, e2, atol=1e-4)


def test_scan_equals_unrolled(paper):
  model, variables = paper
  scanned = coca_jax.create_model(config(scan_layers=True, remat_policy="full"))
  scanned_vars = {"params": layer_stacking.stack_layers(variables["params"], jnp)}
  images, text = make_images(2), make_text([5, 12])
  a = forward(model)(variables, images, text)
  b = forward(scanned)(scanned_vars, images, text)
  for key in a:
    np.testing.assert_allclose(a[key], b[key], atol=2e-5, err_msg=key)
  back = layer_stacking.unstack_layers(scanned_vars["params"])
  jax.tree.map(np.testing.assert_array_equal, back, variables["params"])


def test_scan_init_matches_unrolled_tree(paper):
  _, variables = paper
  scanned, scanned_vars = init_params(config(scan_layers=True))
  unrolled = layer_stacking.unstack_layers(scanned_vars["params"])
  assert jax.tree.structure(unrolled) == jax.tree.structure(variables["params"])


def cosine(a, b):
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return a @ b / np.linalg.norm(a) / np.linalg.norm(b)


def test_bfloat16_compute_tracks_float32(paper):
  model, variables = paper
  bf16 = coca_jax.create_model(config(dtype="bfloat16"))
  images, text = make_images(4), make_text([5, 12, 7, 9])
  a = forward(model)(variables, images, text)
  b = forward(bf16)(variables, images, text)
  assert b["logits"].dtype == jnp.float32
  for key in ("image_embed", "text_embed"):
    for i in range(4):
      assert cosine(a[key][i], b[key][i]) >= 0.99, key
  assert cosine(a["logits"], b["logits"]) >= 0.99


@pytest.mark.parametrize("fixture", ["paper", "open_clip_layout"])
def test_every_parameter_gets_a_finite_nonzero_gradient(fixture, request):
  model, variables = request.getfixturevalue(fixture)
  images, text = make_images(4), make_text([5, 12, 7, 9])

  def loss_fn(params):
    out = model.apply({"params": params}, images, text)
    return losses.coca_loss(out, text, pad_id=0)["total"]

  grads = jax.jit(jax.grad(loss_fn))(variables["params"])
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    assert np.all(np.isfinite(g)), name
    assert np.any(g != 0), name


def test_tied_embeddings_share_the_token_table():
  model, variables = init_params(config(decoder__tie_embeddings=True))
  assert "proj" not in variables["params"]["decoder"]
  images, text = make_images(1), make_text([6])
  out = forward(model)(variables, images, text)
  table = variables["params"]["token_embedding"]["embedding"]
  bumped = jax.tree.map(lambda x: x, variables)
  # Not a constant: the decoder's output is layer-normalised (zero mean across the width,
  # scale 1 and bias 0 at init), so a constant added to the row would not move its logit.
  bump = jax.random.normal(jax.random.key(1), table.shape[1:])
  bumped["params"]["token_embedding"]["embedding"] = table.at[40].add(bump)
  out2 = forward(model)(bumped, images, text)
  # Token 40 never occurs in the input, so only the tied output column can change.
  changed = np.abs(np.asarray(out2["logits"] - out["logits"])).max(axis=(0, 1)) > 1e-6
  assert changed[40] and changed.sum() == 1


def test_logit_scale_is_kept_at_most_100(paper):
  model, variables = paper
  big = jax.tree.map(lambda x: x, variables)
  big["params"]["logit_scale"] = jnp.asarray(np.log(1000.0), jnp.float32)
  out = model.apply(big, make_images(1), make_text([4]))
  np.testing.assert_allclose(out["logit_scale"], 100.0, rtol=1e-6)
  below = jax.tree.map(lambda x: x, variables)
  below["params"]["logit_scale"] = jnp.asarray(np.log(42.0), jnp.float32)
  out = model.apply(below, make_images(1), make_text([4]))
  np.testing.assert_allclose(out["logit_scale"], 42.0, rtol=1e-5)


def test_tiny_model_overfits_eight_pairs(paper):
  model, variables = paper
  images, text = make_images(8, seed=3), make_text([5, 12, 7, 9, 6, 10, 8, 11], seed=3)
  opt = optax.adam(3e-3)

  def loss_fn(params):
    out = model.apply({"params": params}, images, text)
    return losses.coca_loss(out, text, pad_id=0)["total"]

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  params, state = variables["params"], opt.init(variables["params"])
  first = None
  for _ in range(300):
    params, state, loss = step(params, state)
    first = loss if first is None else first
  final = loss_fn(params)
  assert final < 0.1 * first, (float(first), float(final))


def test_every_parameter_has_logical_axis_names():
  model = coca_jax.create_model(MICRO)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                            jnp.zeros((1, 12), jnp.int32))["params"]
  leaves = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), leaf
    assert len(leaf.names) == leaf.value.ndim, leaf.names


@pytest.mark.parametrize("images, text, message", [
    (np.zeros((2, 16, 16)), np.zeros((2, 5), np.int32), "images: expected"),
    (np.zeros((2, 32, 32, 3)), np.zeros((2, 5), np.int32), "images: expected"),
    (np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 5), np.int32), "float dtype"),
    (np.zeros((2, 16, 16, 3)), np.zeros((2, 5), np.float32), "integer token ids"),
    (np.zeros((2, 16, 16, 3)), np.zeros((2, 13), np.int32), "length 13"),
    (np.zeros((2, 16, 16, 3)), np.zeros((10,), np.int32), "text: expected"),
])
def test_bad_inputs_get_clear_errors(paper, images, text, message):
  model, variables = paper
  with pytest.raises(ValueError, match=message):
    model.apply(variables, jnp.asarray(images), jnp.asarray(text))


@pytest.mark.parametrize("overrides, field", [
    (dict(vision__num_heads=3), "vision.num_heads"),
    (dict(vision__patch_size=5), "vision.image_size"),
    (dict(embed_dim=48), "embed_dim"),
    (dict(pooler__layout="stacked"), "pooler.layout"),
    (dict(text__pad_id=64), "text.pad_id"),
    (dict(remat_policy="sometimes"), "remat_policy"),
    (dict(vision__depthh=2), "vision.depthh"),
    (dict(vision__pos_embedding_init="sincos"), "vision.pos_embedding_init"),
    (dict(vision__pos_embedding_init="sincos2d", vision__width=30, vision__num_heads=2),
     "vision.width"),
    (dict(pooler__pos_embedding_scale=-1.0), "pooler.pos_embedding_scale"),
    (dict(pooler__pos_embedding_scale=float("nan")), "pooler.pos_embedding_scale"),
    (dict(pooler__pos_embedding_scale=1.0, vision__width=30, vision__num_heads=2),
     "vision.width"),
])
def test_bad_configs_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    coca_jax.create_model(config(**overrides))


def test_sincos2d_table_is_a_function_of_column_then_row():
  """MAE's table, row-major as the patch tokens: the first half depends on the column only,
  the second on the row only, with sin/cos of the same angle in each half; patches closer in
  one coordinate are closer in that half (the lowest frequency)."""
  from coca_jax.model.vit import sincos2d_table
  grid, width = 4, 16
  table = sincos2d_table(grid, width).reshape(grid, grid, width)  # (row, col, width)
  x_half, y_half = table[..., :width // 2], table[..., width // 2:]
  np.testing.assert_allclose(x_half, np.broadcast_to(x_half[:1], x_half.shape))
  np.testing.assert_allclose(y_half, np.broadcast_to(y_half[:, :1], y_half.shape))
  np.testing.assert_allclose(x_half[0, :, :width // 4], np.sin(np.arange(grid)[:, None] *
                             10000.0 ** (-np.arange(width // 4) / (width // 4))), rtol=1e-6)
  np.testing.assert_allclose(x_half[..., :width // 4] ** 2 + x_half[..., width // 4:] ** 2, 1.0,
                             rtol=1e-6)
  slow = table[..., width // 4 - 1]  # sin of the lowest frequency: increasing along a row
  assert np.all(np.diff(slow[0]) > 0)
  with_cls = sincos2d_table(grid, width, class_token=True)
  assert with_cls.shape == (grid * grid + 1, width) and not with_cls[0].any()
  with pytest.raises(ValueError, match="divisible by 4"):
    sincos2d_table(grid, 18)


@pytest.mark.parametrize("base", [MICRO, MICRO_OPEN_CLIP])
def test_sincos2d_init_starts_the_learned_position_embedding_at_the_table(base):
  """The embedding stays a trained parameter of the same name and shape (open_clip's weights
  load either way); only its starting value changes."""
  from coca_jax.model.vit import sincos2d_table
  images, text = make_images(1), make_text([3])
  shapes = {}
  for init in ("normal", "sincos2d"):
    model = coca_jax.create_model(config(base, vision__pos_embedding_init=init))
    params = model.init(jax.random.key(0), images, text)["params"]
    shapes[init] = jax.tree.map(jnp.shape, params)
    pos = nn.unbox(params["visual"]["pos_embedding"])
  v = base["vision"]
  want = sincos2d_table(v["image_size"] // v["patch_size"], v["width"],
                        v.get("class_token", False))
  np.testing.assert_array_equal(np.asarray(pos), want)
  assert shapes["normal"] == shapes["sincos2d"]


def test_pooler_positions_are_the_centred_table_with_a_zero_class_token_row():
  from coca_jax.model.config import from_dict
  from coca_jax.model.pooler import pooler_positions
  from coca_jax.model.vit import sincos2d_table
  for base in (MICRO, MICRO_OPEN_CLIP):
    cfg = from_dict(config(base, pooler__pos_embedding_scale=3.0))
    table = pooler_positions(cfg)
    patches = table[1:] if cfg.vision.class_token else table
    assert table.shape == (cfg.vision.num_patches + cfg.vision.class_token, cfg.vision.width)
    np.testing.assert_allclose(patches.mean(axis=0), 0.0, atol=1e-6)
    raw = sincos2d_table(cfg.vision.image_size // cfg.vision.patch_size, cfg.vision.width)
    np.testing.assert_allclose(patches, 3.0 * (raw - raw.mean(axis=0)), rtol=1e-6, atol=1e-6)
    if cfg.vision.class_token:
      assert not table[0].any()


@pytest.mark.parametrize("layout", ["cascade", "parallel", "single"])
def test_pooler_positions_reach_the_captioner_only_where_documented(layout):
  """Same params with and without the table (nothing to load or convert). With it, the
  decoder's image tokens change; in the parallel layout the contrastive embedding, which reads
  the encoder's tokens itself, does not; in the others it does (it reads the placed tokens)."""
  base = MICRO_OPEN_CLIP if layout == "single" else config(MICRO, pooler__layout=layout)
  images, text = make_images(2), make_text([5, 7])
  outs, shapes = {}, {}
  for scale in (0.0, 2.0):
    model = coca_jax.create_model(config(base, pooler__pos_embedding_scale=scale))
    if scale == 0.0:
      params = model.init(jax.random.key(0), images, text)["params"]
    shapes[scale] = jax.tree.map(jnp.shape, params)
    outs[scale] = model.apply({"params": params}, images, method="encode_image")
  assert shapes[0.0] == shapes[2.0]
  (emb0, tok0), (emb2, tok2) = outs[0.0], outs[2.0]
  assert not np.allclose(tok0, tok2, atol=1e-3)
  if layout == "parallel":
    np.testing.assert_allclose(emb0, emb2, atol=1e-6)
  else:
    assert not np.allclose(emb0, emb2, atol=1e-3)
