"""open_clip CoCa state dict -> coca_jax params, exactly (no tensor left out or guessed), and
back (`to_open_clip_state_dict`, used by `coca_jax.export`).

  python -m coca_jax.convert.open_clip --input=open_clip_model.safetensors \
      --config=configs/openclip_b32.py --output=/tmp/coca_b32

The target tree comes from the model itself (`abstract_params`, shapes only), and every target
leaf is derived from named open_clip tensors whose shapes are checked BEFORE they are sliced or
reshaped: a fused q;k;v tensor with a wrong row count would otherwise still slice into
correctly-shaped pieces, and B-32's square `visual.proj` passes any output-shape check even when
transposed. Missing, unexpected and mis-shaped tensors are collected and raised together.
"""
import dataclasses
import os
import re
from typing import Any, Callable, Container, Dict, Mapping, Optional, Tuple

from absl import logging
import flax
import numpy as np
from flax import traverse_util

from coca_jax.convert import unwrap
from coca_jax.model.config import from_dict
from coca_jax.model.layer_stacking import stack_layers, unstack_layers
from coca_jax.tools.summary import abstract_params

Shape = Tuple[int, ...]
# The first components of open_clip CoCa's state-dict names.
OPEN_CLIP_TOP_LEVEL = ("visual", "text", "text_decoder", "logit_scale")

# Our top-level (non-layer) params -> (open_clip name, kind). Kinds are defined in _KINDS.
# open_clip's published CoCa models (its model_configs/coca_ViT-B-32.json, coca_ViT-L-14.json):
# (ViT patch size, width, depth, heads) and (text width, heads); the embedding width is the
# text width. Both: 224 px, 12 text and 12 multimodal layers, MLP ratio 4, a single pooler of
# 256 queries and 8 heads, CLIP's 49,408-token vocabulary and 76-token context.
PUBLISHED_MODELS = {
    "coca_ViT-B-32": ((32, 768, 12, 12), (512, 8)),
    "coca_ViT-L-14": ((14, 1024, 24, 16), (768, 12)),
}


def published_model(name: str) -> dict:
  """The model config (a dict for `ModelConfig`) of open_clip's `name` ("coca_ViT-B-32" or
  "coca_ViT-L-14") in open_clip's exact layout: class token and pre-norm ViT without patch
  bias, one attentional pooler, the legacy CLS padding mask, two MLPs per multimodal layer,
  untied output projection, layer-norm eps 1e-5. Raises KeyError for another name."""
  (patch, v_width, v_depth, v_heads), (t_width, t_heads) = PUBLISHED_MODELS[name]
  return dict(
      vision=dict(image_size=224, patch_size=patch, width=v_width, depth=v_depth,
                  num_heads=v_heads, mlp_dim=4 * v_width, class_token=True, pre_norm=True,
                  patch_bias=False),
      pooler=dict(layout="single", num_queries=256, num_heads=8),
      text=dict(vocab_size=49408, context_length=76, width=t_width, depth=12,
                num_heads=t_heads, mlp_dim=4 * t_width, pad_id=0, eos_id=49407,
                legacy_cls_mask=True),
      decoder=dict(depth=12, num_heads=t_heads, mlp_dim=4 * t_width,
                   mlp_after_self_attention=True, tie_embeddings=False),
      embed_dim=t_width,
      layer_norm_eps=1e-5,
  )


_DIRECT = {
    "visual/patch_embed/kernel": ("visual.conv1.weight", "conv"),
    "visual/patch_embed/bias": ("visual.conv1.bias", "copy"),
    "visual/class_token": ("visual.class_embedding", "copy"),
    "visual/pos_embedding": ("visual.positional_embedding", "copy"),  # class-token row first
    "visual/ln_pre/scale": ("visual.ln_pre.weight", "copy"),
    "visual/ln_pre/bias": ("visual.ln_pre.bias", "copy"),
    "pooling/ln_post/scale": ("visual.ln_post.weight", "copy"),
    "pooling/ln_post/bias": ("visual.ln_post.bias", "copy"),
    "pooling/proj": ("visual.proj", "copy"),  # a Parameter already (in, out)
    "token_embedding/embedding": ("text.token_embedding.weight", "copy"),
    "text/cls_embedding": ("text.cls_emb", "copy"),
    "text/pos_embedding": ("text.positional_embedding", "copy"),  # context + 1 rows, CLS last
    "text/ln_final/scale": ("text.ln_final.weight", "copy"),
    "text/ln_final/bias": ("text.ln_final.bias", "copy"),
    "text/proj": ("text.text_projection", "copy"),  # (in, out)
    "decoder/ln_final/scale": ("text_decoder.ln_final.weight", "copy"),
    "decoder/ln_final/bias": ("text_decoder.ln_final.bias", "copy"),
    "decoder/proj": ("text_decoder.text_projection", "copy"),  # (in, out)
    "logit_scale": ("logit_scale", "scalar"),
}

# Prefixes of our repeated modules -> open_clip module prefixes.
_PREFIXES = [
    (re.compile(r"^visual/layers_(\d+)/block/"), r"visual.transformer.resblocks.\1."),
    (re.compile(r"^text/layers_(\d+)/block/"), r"text.transformer.resblocks.\1."),
    (re.compile(r"^decoder/layers_(\d+)/self_attn/"), r"text_decoder.resblocks.\1."),
    (re.compile(r"^decoder/layers_(\d+)/cross_attn/"), r"text_decoder.cross_attn.\1."),
    (re.compile(r"^pooling/pooler/"), "visual.attn_pool."),
]
_QKV = {"query": (0, "q"), "key": (1, "k"), "value": (2, "v")}

# kind -> (source shape from the target shape, transform from source to target, and the
# inverse: fill(source array, target value) writes the target's part of the source tensor).
def _whole(inverse):
  def fill(out, y):
    out[...] = inverse(y)
  return fill


_KINDS: Dict[str, Tuple[Callable[[Shape], Shape], Callable[[np.ndarray, Shape], np.ndarray],
                        Callable[[np.ndarray, np.ndarray], None]]] = {
    "copy": (lambda t: t, lambda x, t: x, _whole(lambda y: y)),
    "scalar": (lambda t: (), lambda x, t: x.reshape(()), _whole(lambda y: y)),
    # torch Linear (out, in) -> Dense (in, out)
    "linear": (lambda t: (t[1], t[0]), lambda x, t: x.T, _whole(lambda y: y.T)),
    # torch Conv2d OIHW -> Flax Conv HWIO
    "conv": (lambda t: (t[3], t[2], t[0], t[1]), lambda x, t: x.transpose(2, 3, 1, 0),
             _whole(lambda y: y.transpose(3, 2, 0, 1))),
    # separate q/k/v projection (heads*head_dim, in) -> DenseGeneral (in, heads, head_dim)
    "head_kernel": (lambda t: (t[1] * t[2], t[0]), lambda x, t: x.T.reshape(t),
                    _whole(lambda y: y.reshape(y.shape[0], -1).T)),
    # out_proj (out, heads*head_dim) -> DenseGeneral (heads, head_dim, out)
    "out_kernel": (lambda t: (t[2], t[0] * t[1]), lambda x, t: x.T.reshape(t),
                   _whole(lambda y: y.reshape(-1, y.shape[-1]).T)),
}


def _fused(index: int, is_bias: bool):
  """q;k;v stacked along rows (in_proj_weight (3W, in), in_proj_bias (3W,)) -> one of them."""
  def source_shape(t):
    width = t[0] * t[1] if is_bias else t[1] * t[2]
    return (3 * width,) if is_bias else (3 * width, t[0])

  def transform(x, t):
    width = x.shape[0] // 3
    part = x[index * width:(index + 1) * width]
    return part.reshape(t) if is_bias else part.T.reshape(t)

  def fill(out, y):
    width = out.shape[0] // 3
    out[index * width:(index + 1) * width] = (
        y.reshape(-1) if is_bias else y.reshape(y.shape[0], -1).T)
  return source_shape, transform, fill


def _layer_rule(prefix: str, rest: str, state_dict: Container[str]):
  """(open_clip name, (source_shape_fn, transform)) for a param inside a block or the pooler."""
  m = re.fullmatch(r"(ln_1|ln_1_kv|ln_2|ln_q|ln_k)/(scale|bias)", rest)
  if m:
    return f"{prefix}{m.group(1)}.{'weight' if m.group(2) == 'scale' else 'bias'}", _KINDS["copy"]
  m = re.fullmatch(r"mlp/(fc1|fc2)/(kernel|bias)", rest)
  if m:
    name = f"{prefix}mlp.{'c_fc' if m.group(1) == 'fc1' else 'c_proj'}"
    return (f"{name}.weight", _KINDS["linear"]) if m.group(2) == "kernel" else (
        f"{name}.bias", _KINDS["copy"])
  m = re.fullmatch(r"attn/(query|key|value)/(kernel|bias)", rest)
  if m:
    index, letter = _QKV[m.group(1)]
    if m.group(2) == "bias":
      return f"{prefix}attn.in_proj_bias", _fused(index, True)
    # torch's MultiheadAttention keeps separate q/k/v weights when key width != query width
    # (the pooler); otherwise one fused in_proj_weight.
    separate = f"{prefix}attn.{letter}_proj_weight"
    if separate in state_dict:
      return separate, _KINDS["head_kernel"]
    return f"{prefix}attn.in_proj_weight", _fused(index, False)
  m = re.fullmatch(r"attn/out/(kernel|bias)", rest)
  if m:
    return (f"{prefix}attn.out_proj.weight", _KINDS["out_kernel"]) if m.group(1) == "kernel" else (
        f"{prefix}attn.out_proj.bias", _KINDS["copy"])
  if rest == "queries":
    return f"{prefix}query", _KINDS["copy"]
  return None


def _rule(path: str, state_dict: Container[str]):
  """(open_clip name, kind) for one of our params; `state_dict` holds (at least) the open_clip
  names present, which decides between fused and separate q/k/v weights."""
  if path in _DIRECT:
    name, kind = _DIRECT[path]
    return name, _KINDS[kind]
  for pattern, replacement in _PREFIXES:
    m = pattern.match(path)
    if m:
      return _layer_rule(m.expand(replacement), path[m.end():], state_dict)
  return None


def _key_summary(state_dict, stripped, expected) -> str:
  """What the keys look like beside what was expected: the usual cause of a long list."""
  prefix = unwrap.shared_prefix(state_dict)
  firsts = sorted({k.split(".")[0] for k in state_dict})
  lines = [f"Keys ({len(state_dict)}) share the prefix {prefix!r}"
           if prefix else f"Keys ({len(state_dict)}) share no prefix",
           f"(wrapper prefixes removed: {', '.join(stripped) or 'none'}); "
           f"their first components: {', '.join(firsts[:8])}{' ...' if len(firsts) > 8 else ''}.",
           f"Expected {len(expected)} names such as "
           + ", ".join(expected[i] for i in sorted({0, len(expected) // 2, len(expected) - 1}))
           + f"; first components {', '.join(sorted({n.split('.')[0] for n in expected}))}."]
  return " ".join(lines[:2]) + "\n" + lines[2]


def _fmt(shape) -> str:
  return "(" + ", ".join(str(d) for d in shape) + ")"


def convert_state_dict(state_dict: Mapping[str, Any], model_config) -> Dict[str, Any]:
  """open_clip CoCa state dict (name -> array) -> this model's float32 NumPy params.

  Wrapper prefixes that every key shares (DDP's `module.`, torch.compile's `_orig_mod.`,
  Lightning's `model.`, in any order) are removed first (`unwrap.strip_prefixes`).
  Returns unrolled layers, or stacked ones when `scan_layers` is set. Raises ValueError naming
  every missing, unexpected or mis-shaped tensor, after the prefix the keys share and the names
  that were expected.
  """
  cfg = from_dict(model_config)
  # Convert layer by layer (unrolled names map one-to-one), then stack for a scanned model.
  unrolled = dataclasses.replace(cfg, scan_layers=False)
  target = traverse_util.flatten_dict(flax.linen.unbox(abstract_params(unrolled)), sep="/")
  expected = sorted({rule[0] for rule in (_rule(p, ()) for p in target) if rule})
  state_dict, stripped = unwrap.strip_prefixes(state_dict, {n.split(".")[0] for n in expected})
  used, problems, flat = set(), {}, {}
  for path, leaf in sorted(target.items()):
    shape = tuple(leaf.shape)
    rule = _rule(path, state_dict)
    if rule is None:
      problems[f"no open_clip tensor maps to {path}"] = None
      continue
    name, (source_shape, transform, _) = rule
    if name not in state_dict:
      problems[f"missing tensor {name} (for {path})"] = None
      continue
    used.add(name)
    x = np.asarray(state_dict[name])
    want = source_shape(shape)
    if tuple(x.shape) != want and not (want == () and x.size == 1):
      problems[f"mis-shaped tensor {name}: shape {_fmt(x.shape)}, expected {_fmt(want)} "
                f"(for {path} {_fmt(shape)})"] = None
      continue
    y = np.array(transform(x, shape), dtype=np.float32, order="C")  # a copy, not a view
    if y.shape != shape:  # a converter bug, not a bad input; still reported with its name
      problems[f"converted {name} to shape {_fmt(y.shape)}, but {path} is {_fmt(shape)}"] = None
      continue
    flat[path] = y
  for name in sorted(set(state_dict) - used):
    problems[f"unexpected tensor {name} {_fmt(np.shape(state_dict[name]))}"] = None
  if problems:
    raise ValueError(f"open_clip state dict does not match the model config "
                     f"({len(problems)} problem(s)).\n"
                     + _key_summary(state_dict, stripped, expected)
                     + "\n  " + "\n  ".join(problems))
  params = traverse_util.unflatten_dict(flat, sep="/")
  if cfg.scan_layers:
    params = stack_layers(params)
    shapes = lambda tree: {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}
    if shapes(params) != shapes(flax.linen.unbox(abstract_params(cfg))):
      raise ValueError("stacked params do not match the scanned model's params")
  return params


def to_open_clip_state_dict(params: Mapping[str, Any], model_config) -> Dict[str, np.ndarray]:
  """The inverse of `convert_state_dict`: coca_jax params (unrolled or scanned, as the config
  says) -> open_clip CoCa state dict (name -> float32 NumPy array) that open_clip's
  `load_state_dict` accepts, for a model config in open_clip's layout (pooler layout "single").
  """
  cfg = from_dict(model_config)
  params = flax.linen.unbox(params)
  if cfg.scan_layers:
    params = unstack_layers(params)
  unrolled = dataclasses.replace(cfg, scan_layers=False)
  target = traverse_util.flatten_dict(flax.linen.unbox(abstract_params(unrolled)), sep="/")
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  problems = [f"missing param {p}" for p in sorted(set(target) - set(flat))]
  problems += [f"unexpected param {p}" for p in sorted(set(flat) - set(target))]
  # torch keeps separate q/k/v weights only where the key width differs from the query width.
  separate = {f"visual.attn_pool.attn.{x}_proj_weight" for x in "qkv"
              if cfg.vision.width != cfg.embed_dim}
  state_dict = {}
  for path in sorted(set(target) & set(flat)):
    y, shape = np.asarray(flat[path], np.float32), tuple(target[path].shape)
    rule = _rule(path, separate)
    if y.shape != shape:
      problems.append(f"mis-shaped param {path}: shape {_fmt(y.shape)}, expected {_fmt(shape)}")
    elif rule is None:
      problems.append(f"no open_clip tensor for {path} (not open_clip's layout)")
    else:
      name, (source_shape, _, fill) = rule
      fill(state_dict.setdefault(name, np.zeros(source_shape(shape), np.float32)), y)
  if problems:
    raise ValueError(f"params do not convert to an open_clip state dict "
                     f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
  return state_dict


def load_state_dict(path: str, entry: Optional[str] = None) -> Dict[str, np.ndarray]:
  """Reads a .safetensors (NumPy, no torch) or PyTorch .bin/.pt/.pth file -> name -> array.

  Training checkpoints nest the weights (`{"state_dict": ...}`, `{"model": ...}`, EMA
  entries) and wrappers prefix them (`module.`, `_orig_mod.`, `model.`): `unwrap` finds the
  weights (`entry` "a/b" picks a nested one by name) and strips the prefixes every key shares.
  PyTorch tensors come back as float32 (torch's bfloat16 has no NumPy view); safetensors ones
  keep their dtype (ml_dtypes gives NumPy a bfloat16). The converter casts to float32 anyway.
  Raises ValueError when the file holds no state dict or `entry` names none.
  """
  if path.endswith(".safetensors"):
    import ml_dtypes  # pylint: disable=g-import-not-at-top,unused-import  (NumPy bfloat16)
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    checkpoint = load_file(path)
  else:
    import pickle  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top  (only for PyTorch files)
    try:
      checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      raise ValueError(
          f"{path}: holds Python objects other than tensors, which are not unpickled here "
          f"(torch.load(weights_only=True) refused: {str(e).splitlines()[0]}). Save the "
          "weights alone: torch.save(model.state_dict(), 'weights.pt')") from e
  state_dict, found = unwrap.find_state_dict(checkpoint, entry)
  if found:
    logging.info("%s: weights from entry %r", path, found)
  if not path.endswith(".safetensors"):
    state_dict = {k: v.detach().float().numpy() for k, v in state_dict.items()}
  state_dict, _ = unwrap.strip_prefixes(state_dict, OPEN_CLIP_TOP_LEVEL)
  return dict(state_dict)


def main(argv):
  """Converts `--input` (open_clip weights, `--entry` inside a nested checkpoint) to the model
  of `--config`, saves a params directory at `--output` and prints the parameter count.
  Raises ValueError (from `convert_state_dict` / `load_state_dict`) when the weights do not
  match the config's model or the file holds more than tensors."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from coca_jax.checkpoints import params_dir  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  model_config = f.config.model
  params = convert_state_dict(load_state_dict(f.input, f.entry or None), model_config)
  params_dir.save(f.output, params, model_config)
  n = sum(int(np.prod(x.shape)) for x in traverse_util.flatten_dict(params).values())
  print(f"wrote {n:,d} params from {f.input} to {os.path.abspath(f.output)}")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Config file; its `model` is converted to.",
                                  lock_config=True)
  flags.DEFINE_string("input", None, "open_clip weights: .safetensors, .bin, .pt or .pth.")
  flags.DEFINE_string("entry", "", "The weights' entry in a nested checkpoint, e.g. "
                      "'state_dict_ema' (default: the only one, else the model's own weights).")
  flags.DEFINE_string("output", None, "Output directory (a coca_jax params checkpoint).")
  flags.mark_flags_as_required(["config", "input", "output"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
