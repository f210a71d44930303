"""open_clip CoCa -> coca_jax: converted weights reproduce open_clip's outputs to 1e-4 (float32).

Every open_clip tensor is overwritten from a seeded generator first: initial values of 1 and 0
(LayerNorm gains, biases) hide mapping mistakes, and `text_decoder.text_projection` starts as
uninitialised memory. Compared: image and text embeddings, contrastive logits, caption logits
and the total training loss, on coca_ViT-B-32 and on a tiny custom CoCa (also with scanned
layers). The tiny one also covers the converter's errors and the checkpoint / CLI round trips.
"""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from coca_jax.checkpoints import params_dir
from coca_jax.convert.open_clip import convert_state_dict, load_state_dict
from coca_jax.train.losses import coca_loss
from coca_jax.model import create_model, from_dict

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

TOL = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUANTITIES = ("image_embed", "text_embed", "contrastive_logits", "caption_logits", "loss")

# A tiny open_clip CoCa and the same model as a coca_jax config. The ViT is wider than the
# embedding so the pooler keeps separate q/k/v weights, as in the published models; every
# tower has several heads so a wrong head/head_dim order shows.
SMALL_OPEN_CLIP = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=32, patch_size=8, width=96, head_width=32, layers=2,
                    attentional_pool=True, attn_pooler_queries=8, attn_pooler_heads=4,
                    output_tokens=True),
    text_cfg=dict(context_length=16, vocab_size=1000, width=64, heads=4, layers=2,
                  embed_cls=True, output_tokens=True),
    multimodal_cfg=dict(context_length=16, vocab_size=1000, width=64, heads=4, layers=2),
)
SMALL_CONFIG = dict(
    vision=dict(image_size=32, patch_size=8, width=96, depth=2, num_heads=3, mlp_dim=384,
                class_token=True, pre_norm=True, patch_bias=False),
    pooler=dict(layout="single", num_queries=8, num_heads=4),
    text=dict(vocab_size=1000, context_length=16, width=64, depth=2, num_heads=4, mlp_dim=256,
              pad_id=0, eos_id=999, legacy_cls_mask=True),
    decoder=dict(depth=2, num_heads=4, mlp_dim=256, mlp_after_self_attention=True),
    embed_dim=64,
    layer_norm_eps=1e-5,
)


def _b32_config():
  sys.path.insert(0, REPO)
  try:
    from configs import openclip_b32  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(REPO)
  return openclip_b32.get_config().model


def randomize_(model, seed):
  """Every parameter from a seeded generator, at scales that keep activations O(1)."""
  rng = np.random.default_rng(seed)
  gains = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
  with torch.no_grad():
    for name, p in model.named_parameters():
      n = rng.standard_normal(tuple(p.shape), dtype=np.float32)
      if name == "logit_scale":
        value = np.full(p.shape, math.log(50.0), np.float32)
      elif id(p) in gains:
        value = 1 + 0.1 * n
      elif p.ndim <= 1:
        value = 0.02 * n
      else:  # the projections are stored (in, out); everything else (out, in, ...)
        stored_in_out = name in ("visual.proj",) or name.endswith("text_projection")
        value = n / math.sqrt(p.shape[0] if stored_in_out else math.prod(p.shape[1:]))
      p.copy_(torch.from_numpy(value))


def state_dict_numpy(model):
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  assert set(sd) == {k for k, _ in model.named_parameters()}, "buffers in the state dict"
  return sd


def make_texts(rng, context, sot, eot, lengths, zero_inside_length):
  """Rows of [sot, ids..., eot, 0...]; a length equal to `context` fills every slot; one row
  has id 0 (the pad id) inside the text, before its end token."""
  rows = []
  for n in list(lengths) + [zero_inside_length]:
    row = np.zeros(context, np.int64)
    row[0], row[n - 1] = sot, eot
    row[1:n - 1] = rng.integers(1, sot, n - 2)
    rows.append(row)
  rows[-1][2] = 0
  return np.stack(rows)


def torch_outputs(model, images_nchw, text):
  model.eval()
  with torch.no_grad():
    out = model(torch.from_numpy(images_nchw), torch.from_numpy(text))
    loss_fn = open_clip.loss.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0, pad_id=0)
    clip_loss, caption_loss = loss_fn(out["image_features"], out["text_features"],
                                      out["logits"], out["labels"], out["logit_scale"])
    contrastive = out["logit_scale"] * out["image_features"] @ out["text_features"].T
  return {"image_embed": out["image_features"].numpy(),
          "text_embed": out["text_features"].numpy(),
          "contrastive_logits": contrastive.numpy(),
          "caption_logits": out["logits"].numpy(),  # open_clip drops the last input position
          "loss": (clip_loss + caption_loss).numpy()}


def jax_outputs(model_config, params, images_nhwc, text):
  model = create_model(model_config)

  @jax.jit
  def forward(params, images, text):
    out = model.apply({"params": params}, images, text)
    return {"image_embed": out["image_embed"],
            "text_embed": out["text_embed"],
            "contrastive_logits": out["logit_scale"] * out["image_embed"] @ out["text_embed"].T,
            "caption_logits": out["logits"],
            "loss": coca_loss(out, text, pad_id=0)["total"]}

  out = forward(params, jnp.asarray(images_nhwc), jnp.asarray(text, jnp.int32))
  return jax.tree.map(np.asarray, out)


def run_both(torch_model, model_config, params, images_nchw, text):
  ref = torch_outputs(torch_model, images_nchw, text)
  ours = jax_outputs(model_config, params, images_nchw.transpose(0, 2, 3, 1), text)
  return ref, ours


def max_err(a, b):
  assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def b32():
  """coca_ViT-B-32, randomized, converted (unrolled); returns (reference, ours) outputs."""
  model = open_clip.create_model("coca_ViT-B-32", pretrained=None)
  randomize_(model, seed=0)
  cfg = _b32_config()
  params = convert_state_dict(state_dict_numpy(model), cfg)
  rng = np.random.default_rng(1)
  images = rng.standard_normal((5, 3, 224, 224), dtype=np.float32)
  text = make_texts(rng, 76, 49406, 49407, lengths=(3, 9, 30, 76), zero_inside_length=12)
  outputs = run_both(model, cfg, params, images, text)
  del model, params
  return outputs


@pytest.fixture(scope="module")
def small_torch():
  model = open_clip.coca_model.CoCa(**SMALL_OPEN_CLIP)
  randomize_(model, seed=2)
  return model.eval()


@pytest.fixture(scope="module")
def small_sd(small_torch):
  return state_dict_numpy(small_torch)


@pytest.fixture(scope="module")
def small_inputs():
  rng = np.random.default_rng(3)
  images = rng.standard_normal((4, 3, 32, 32), dtype=np.float32)
  text = make_texts(rng, 16, 998, 999, lengths=(3, 7, 16), zero_inside_length=9)
  return images, text


@pytest.fixture(scope="module")
def small(small_torch, small_sd, small_inputs):
  return run_both(small_torch, SMALL_CONFIG, convert_state_dict(small_sd, SMALL_CONFIG),
                  *small_inputs)


@pytest.fixture(scope="module")
def small_scan(small_torch, small_sd, small_inputs):
  cfg = dict(SMALL_CONFIG, scan_layers=True)
  params = convert_state_dict(small_sd, cfg)
  assert "layers" in params["visual"] and "layers_0" not in params["visual"]
  return run_both(small_torch, cfg, params, *small_inputs)


@pytest.mark.parametrize("setup", ["b32", "small", "small_scan"])
def test_reference_is_not_degenerate(setup, request):
  ref, _ = request.getfixturevalue(setup)
  assert ref["caption_logits"].std() > 0.1
  assert ref["contrastive_logits"].std() > 0.1


@pytest.mark.parametrize("quantity", QUANTITIES)
@pytest.mark.parametrize("setup", ["b32", "small", "small_scan"])
def test_parity(setup, quantity, request):
  ref, ours = request.getfixturevalue(setup)
  err = max_err(ref[quantity], ours[quantity])
  print(f"\n{setup:10s} {quantity:18s} max abs err {err:.3g}")
  assert err <= TOL, f"{setup} {quantity}: max abs error {err:.3g} > {TOL}"


@pytest.mark.parametrize("quantity", QUANTITIES)
def test_scan_matches_unrolled(small, small_scan, quantity):
  assert max_err(small[1][quantity], small_scan[1][quantity]) <= TOL


# --- converter errors --------------------------------------------------------------------

def test_missing_tensor(small_sd):
  sd = dict(small_sd)
  del sd["text_decoder.cross_attn.1.ln_1_kv.bias"]
  with pytest.raises(ValueError, match=r"missing tensor text_decoder\.cross_attn\.1\.ln_1_kv"):
    convert_state_dict(sd, SMALL_CONFIG)


def test_unexpected_tensor(small_sd):
  sd = dict(small_sd, **{"visual.extra_head.weight": np.zeros((3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected tensor visual\.extra_head\.weight"):
    convert_state_dict(sd, SMALL_CONFIG)


def test_misshaped_tensor(small_sd):
  # One extra row would still slice into correctly-shaped q, k and v.
  name = "text.transformer.resblocks.0.attn.in_proj_weight"
  sd = dict(small_sd, **{name: np.zeros((3 * 64 + 1, 64), np.float32)})
  with pytest.raises(ValueError, match=r"mis-shaped tensor text\.transformer\.resblocks\.0\."
                                       r"attn\.in_proj_weight: shape \(193, 64\)"):
    convert_state_dict(sd, SMALL_CONFIG)


def test_all_problems_reported_together(small_sd):
  sd = dict(small_sd, **{"extra": np.zeros(2, np.float32),
                         "visual.proj": np.zeros((64, 65), np.float32)})
  del sd["logit_scale"]
  with pytest.raises(ValueError) as info:
    convert_state_dict(sd, SMALL_CONFIG)
  message = str(info.value)
  for expected in ("missing tensor logit_scale", "unexpected tensor extra",
                   "mis-shaped tensor visual.proj"):
    assert expected in message, message


def test_wrong_config_is_reported(small_sd):
  with pytest.raises(ValueError, match="no open_clip tensor maps to"):
    convert_state_dict(small_sd, dict(SMALL_CONFIG, pooler=dict(layout="cascade",
                                                                 num_queries=8, num_heads=4)))


# --- files: readers, params checkpoint, CLI ----------------------------------------------

def assert_same_params(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert set(fa) == set(fb)
  for key in fa:
    assert np.asarray(fb[key]).dtype == np.float32, key
    np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]), err_msg=str(key))


def test_params_checkpoint_round_trip(small_sd, tmp_path):
  params = convert_state_dict(small_sd, SMALL_CONFIG)
  params_dir.save(str(tmp_path / "ckpt"), params, SMALL_CONFIG)
  restored, cfg = params_dir.load(str(tmp_path / "ckpt"))
  assert cfg == from_dict(SMALL_CONFIG)
  assert_same_params(params, restored)


def test_torch_checkpoint_reader(small_torch, small_sd, tmp_path):
  """A training checkpoint: {"state_dict": ...} with DDP's "module." prefix."""
  path = str(tmp_path / "epoch_1.pt")
  torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in
                                         small_torch.state_dict().items()}}, path)
  sd = load_state_dict(path)
  assert set(sd) == set(small_sd)
  for k, v in small_sd.items():
    np.testing.assert_array_equal(sd[k], v, err_msg=k)


def test_bfloat16_safetensors_reader(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  value = np.array([1.5, -2.0], ml_dtypes.bfloat16)
  save_file({"logit_scale": value}, str(tmp_path / "bf16.safetensors"))
  sd = load_state_dict(str(tmp_path / "bf16.safetensors"))
  np.testing.assert_array_equal(sd["logit_scale"].astype(np.float32), [1.5, -2.0])


def test_cli_on_safetensors(small_sd, tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  weights = str(tmp_path / "open_clip_model.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in small_sd.items()}, weights)
  config_file = tmp_path / "small_config.py"
  config_file.write_text("import ml_collections\n\n\ndef get_config():\n"
                         "  config = ml_collections.ConfigDict()\n"
                         f"  config.model = {SMALL_CONFIG!r}\n  return config\n")
  out = tmp_path / "converted"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "coca_jax.convert.open_clip",
                        f"--input={weights}", f"--config={config_file}", f"--output={out}"],
                       cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stdout + run.stderr
  restored, cfg = params_dir.load(str(out))
  assert cfg == from_dict(SMALL_CONFIG)
  assert_same_params(convert_state_dict(small_sd, SMALL_CONFIG), restored)


# --- checkpoints as training scripts and wrappers save them ------------------------------

def _prefixed(state_dict, prefix):
  return {prefix + k: v for k, v in state_dict.items()}


# name -> what torch.save is given, from the model's own torch state dict.
LAYOUTS = {
    "plain": lambda sd: sd,
    "torch.compile": lambda sd: _prefixed(sd, "_orig_mod."),
    "DDP(torch.compile)": lambda sd: _prefixed(sd, "module._orig_mod."),
    "torch.compile(DDP)": lambda sd: _prefixed(sd, "_orig_mod.module."),
    "open_clip training": lambda sd: {"epoch": 3, "name": "run", "state_dict":
                                      _prefixed(sd, "module."), "optimizer": {
                                          "state": {}, "param_groups": [{"lr": 1e-4}]}},
    "open_clip training, compiled": lambda sd: {"epoch": 3, "state_dict":
                                                _prefixed(sd, "_orig_mod.module.")},
    "Lightning": lambda sd: {"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.4",
                             "state_dict": _prefixed(sd, "model."),
                             "optimizer_states": [{"state": {}}], "lr_schedulers": []},
    "Lightning, compiled": lambda sd: {"state_dict": _prefixed(sd, "model._orig_mod."),
                                       "loops": {}},
    "model entry": lambda sd: {"model": sd, "epoch": 2},
    "nested model/state_dict": lambda sd: {"model": {"state_dict": _prefixed(sd, "module.")}},
    "ema entry": lambda sd: {"ema": _prefixed(sd, "module.")},
    "AveragedModel": lambda sd: dict(_prefixed(sd, "module."), n_averaged=torch.tensor(7)),
    "DDP(AveragedModel)": lambda sd: dict(_prefixed(sd, "module.module."),
                                          **{"module.n_averaged": torch.tensor(7)}),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_checkpoint_layouts_convert_bitwise(layout, small_torch, small_sd, tmp_path):
  path = str(tmp_path / "checkpoint.pt")
  torch.save(LAYOUTS[layout](small_torch.state_dict()), path)
  assert_same_params(convert_state_dict(small_sd, SMALL_CONFIG),
                     convert_state_dict(load_state_dict(path), SMALL_CONFIG))


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "model.module."])
def test_prefixed_safetensors_and_dicts_convert(prefix, small_sd, tmp_path):
  """Prefixes come off in the converter too (a state dict handed over in Python)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  expected = convert_state_dict(small_sd, SMALL_CONFIG)
  assert_same_params(expected, convert_state_dict(_prefixed(small_sd, prefix), SMALL_CONFIG))
  path = str(tmp_path / "prefixed.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in _prefixed(small_sd, prefix).items()}, path)
  assert_same_params(expected, convert_state_dict(load_state_dict(path), SMALL_CONFIG))


def test_main_weights_before_ema_and_entry_picks(small_torch, small_sd, tmp_path):
  other = {k: v + 1 for k, v in small_torch.state_dict().items()}
  path = str(tmp_path / "timm_style.pt")
  torch.save({"state_dict": small_torch.state_dict(), "state_dict_ema": other}, path)
  assert_same_params(convert_state_dict(small_sd, SMALL_CONFIG),
                     convert_state_dict(load_state_dict(path), SMALL_CONFIG))
  ema = load_state_dict(path, entry="state_dict_ema")
  np.testing.assert_array_equal(ema["logit_scale"], small_sd["logit_scale"] + 1)
  with pytest.raises(ValueError, match=r"no entry 'ema'.*state_dict_ema"):
    load_state_dict(path, entry="ema")


def test_mismatch_error_names_the_prefix_and_expected_names_first(small_sd):
  """Keys that still do not match (a prefix that is not a wrapper around all of them)."""
  sd = dict(_prefixed(small_sd, "backbone.coca."), **{"head.weight": np.zeros(2, np.float32)})
  with pytest.raises(ValueError) as info:
    convert_state_dict(sd, SMALL_CONFIG)
  first_lines = str(info.value).splitlines()[:3]
  assert "share no prefix" in first_lines[1] and "backbone" in first_lines[1], first_lines
  assert first_lines[2].startswith("Expected") and "visual." in first_lines[2], first_lines
  sd = _prefixed(small_sd, "visual.")  # a shared prefix that is one of the model's own names
  with pytest.raises(ValueError) as info:
    convert_state_dict(sd, SMALL_CONFIG)
  assert "share the prefix 'visual.'" in str(info.value).splitlines()[1]
