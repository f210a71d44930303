"""Params for other JAX projects: export a checkpoint to one self-contained directory, load it.

  python -m coca_jax.export --checkpoint=PATH --output=DIR [--dtype=float32|bfloat16] \
      [--tokenizer=SPEC]

  model, params, tokenizer = coca_jax.load(DIR)   # needs DIR and coca_jax, nothing else

DIR is a params-only checkpoint (`coca_jax.checkpoints.params_dir`): params/ (Orbax), the model
config, the tokenizer (tokenizer.json next to its SentencePiece model or CLIP BPE vocabulary)
and how inputs were prepared in training (data_config.json: normalisation, image size, text
length), so that `eval.py` and `coca_jax.inference.batch` need no config for it.
A model in open_clip's layout (the `openclip_*` configs) also gets open_clip_model.safetensors and
open_clip_config.json, which open_clip reads back:

  model = open_clip.coca_model.CoCa(**json.load(open("DIR/open_clip_config.json")))
  model.load_state_dict(safetensors.torch.load_file("DIR/open_clip_model.safetensors"))

PATH is a params directory (`python -m coca_jax.convert.open_clip` writes one), a training
workdir (its latest checkpoint) or one checkpoint step of a workdir.

Modules:
  __init__.py   `export` (writes DIR), `load` (reads it back), `open_clip_config`
  __main__.py   the `python -m coca_jax.export` command line
"""
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

# Imported by `import coca_jax` (for `coca_jax.load`): heavier modules (Orbax, open_clip
# conversion, safetensors) are imported where they are used.

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
CLIP_VOCAB_SIZE = 49408


def load_params(path: str):
  """(params, ModelConfig) from PATH."""
  # Params directories, training workdirs and checkpoint steps alike.
  from coca_jax.checkpoints import load_params as read  # pylint: disable=g-import-not-at-top
  return read(path)


def default_tokenizer(path: str, cfg) -> Optional[Any]:
  """The tokenizer a checkpoint was trained with, where that can be known: one saved with it,
  the `data.tokenizer` of a training workdir's config.json, CLIP's BPE for CLIP's vocabulary
  size; None otherwise."""
  from coca_jax.checkpoints import params_dir  # pylint: disable=g-import-not-at-top
  tokenizer = params_dir.load_tokenizer(path)
  if tokenizer is not None:
    return tokenizer
  # A workdir holds config.json; a checkpoint step is WORKDIR/checkpoints/<step>.
  spec = (_workdir_config(path) or {}).get("data", {}).get("tokenizer")
  if spec:
    return spec
  if cfg.text.vocab_size == CLIP_VOCAB_SIZE:
    return "clip_bpe"
  return None


def _workdir_config(path: str) -> Optional[Dict[str, Any]]:
  """The config.json of a training workdir or of the workdir of a checkpoint step, or None."""
  config_file = os.path.join(path, "config.json")
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.basename(parent) == "checkpoints":
    config_file = os.path.join(os.path.dirname(parent), "config.json")
  if not os.path.exists(config_file):
    return None
  with open(config_file) as f:
    return json.load(f)


def training_data_config(path: str) -> Optional[Dict[str, Any]]:
  """The input fields (normalisation, image size, text length) a checkpoint was trained with:
  saved with a params directory, or its workdir's config.json; None when unknown."""
  from coca_jax.checkpoints import params_dir  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(path, params_dir.MODEL_CONFIG)):
    return params_dir.load_data_config(path)
  config = _workdir_config(path)
  return dict(config["data"]) if config and "data" in config else None


def _mlp_ratio(mlp_dim: int, width: int) -> float:
  return mlp_dim / width


def open_clip_config(model_config) -> Tuple[Optional[Dict[str, Any]], List[str]]:
  """(keyword arguments of `open_clip.coca_model.CoCa` for the same model, []), or (None,
  reasons) when the model is not in a layout open_clip can build."""
  from coca_jax.model.config import from_dict  # pylint: disable=g-import-not-at-top
  cfg = from_dict(model_config)
  v, p, t, d = cfg.vision, cfg.pooler, cfg.text, cfg.decoder
  needs = {
      "pooler.layout == 'single'": p.layout == "single",
      "vision.class_token": v.class_token,
      "vision.pre_norm": v.pre_norm,
      "not vision.patch_bias": not v.patch_bias,
      "text.legacy_cls_mask (open_clip's factory builds no other)": t.legacy_cls_mask,
      "decoder.mlp_after_self_attention": d.mlp_after_self_attention,
      "not decoder.tie_embeddings": not d.tie_embeddings,
      "exact_gelu": cfg.exact_gelu,
      "qkv_bias": cfg.qkv_bias,
      "layer_norm_eps == 1e-5": cfg.layer_norm_eps == 1e-5,
  }
  for name, mlp, width in (("vision", v.mlp_dim, v.width), ("text", t.mlp_dim, t.width),
                           ("decoder", d.mlp_dim, t.width)):
    needs[f"{name}.mlp_dim == int(width * mlp_dim / width) (open_clip's mlp_ratio)"] = (
        int(width * _mlp_ratio(mlp, width)) == mlp)
  reasons = [name for name, ok in needs.items() if not ok]
  if reasons:
    return None, reasons
  return {
      "embed_dim": cfg.embed_dim,
      "vision_cfg": dict(image_size=v.image_size, patch_size=v.patch_size, width=v.width,
                         layers=v.depth, head_width=v.width // v.num_heads,
                         mlp_ratio=_mlp_ratio(v.mlp_dim, v.width), attentional_pool=True,
                         attn_pooler_queries=p.num_queries, attn_pooler_heads=p.num_heads,
                         output_tokens=True),
      "text_cfg": dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                       heads=t.num_heads, layers=t.depth,
                       mlp_ratio=_mlp_ratio(t.mlp_dim, t.width), embed_cls=True,
                       pad_id=t.pad_id, output_tokens=True),
      "multimodal_cfg": dict(context_length=t.context_length, vocab_size=t.vocab_size,
                             width=t.width, heads=d.num_heads, layers=d.depth,
                             mlp_ratio=_mlp_ratio(d.mlp_dim, t.width)),
      "pad_id": t.pad_id,
  }, []


def export(checkpoint: str, output: str, dtype: str = "float32",
           tokenizer: Any = "auto") -> Dict[str, Any]:
  """Writes `output` (see the module docstring); returns what was written. `tokenizer`: a spec
  for `coca_jax.tokenizers.load`, "auto" (`default_tokenizer`) or None."""
  from coca_jax.checkpoints import params_dir  # pylint: disable=g-import-not-at-top
  if os.path.exists(os.path.join(output, params_dir.PARAMS)):
    raise FileExistsError(f"{output} already holds params; choose an empty directory")
  params, cfg = load_params(checkpoint)
  if tokenizer == "auto":
    tokenizer = default_tokenizer(checkpoint, cfg)
  params_dir.save(output, params, cfg, tokenizer=tokenizer, dtype=dtype,
                         data=training_data_config(checkpoint))
  written = {"output": os.path.abspath(output), "dtype": dtype,
             "params": int(sum(np.size(x) for x in _leaves(params))), "tokenizer": None}
  if os.path.exists(os.path.join(output, params_dir.TOKENIZER)):
    with open(os.path.join(output, params_dir.TOKENIZER)) as f:
      written["tokenizer"] = json.load(f)
  else:
    written["warning"] = "no tokenizer: captions cannot be decoded; pass --tokenizer=SPEC"
  kwargs, reasons = open_clip_config(cfg)
  if kwargs is None:
    written["open_clip"] = "not written: " + "; ".join(reasons)
    return written
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from coca_jax.convert.open_clip import to_open_clip_state_dict
  state_dict = to_open_clip_state_dict(params, cfg)
  storage = params_dir.DTYPES[dtype]
  save_file({k: np.ascontiguousarray(v.astype(storage)) for k, v in state_dict.items()},
            os.path.join(output, OPEN_CLIP_WEIGHTS))
  with open(os.path.join(output, OPEN_CLIP_CONFIG), "w") as f:
    json.dump(kwargs, f, indent=2, sort_keys=True)
  written["open_clip"] = os.path.join(written["output"], OPEN_CLIP_WEIGHTS)
  return written


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


def load(directory: str, dtype: Optional[str] = None):
  """-> (CoCa module, params, tokenizer or None) from an exported directory.

  params: a nested dict of NumPy arrays, as stored (float32 or bfloat16) or cast to `dtype`;
  `model.apply({"params": params}, ...)` computes in the model config's dtype either way.
  """
  from coca_jax.checkpoints import params_dir  # pylint: disable=g-import-not-at-top
  from coca_jax.model import create_model  # pylint: disable=g-import-not-at-top
  params, cfg = params_dir.load(directory)
  if dtype is not None:
    import jax  # pylint: disable=g-import-not-at-top
    params = jax.tree.map(lambda x: x.astype(params_dir.DTYPES[dtype]), params)
  return create_model(cfg), params, params_dir.load_tokenizer(directory)
