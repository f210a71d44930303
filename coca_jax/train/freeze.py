"""Frozen params: kept out of the optimized pytree entirely, so they get no gradient step, no
weight decay and no optimizer state. A param is frozen when its path ("pooling/proj",
"text/layers_0/mlp") equals or lies under one of the given prefixes.

  trainable, frozen = freeze.split(params, prefixes)
  params = freeze.merge(trainable, frozen)   # the model's full params again (no copies)
"""
from typing import Any, Dict, Sequence, Tuple

from flax import traverse_util

from coca_jax.model.config import ModelConfig


def _frozen(path: Tuple[str, ...], prefixes: Sequence[str]) -> bool:
  joined = "/".join(path)
  return any(joined == p or joined.startswith(p.rstrip("/") + "/") for p in prefixes)


def split(params, prefixes: Sequence[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(trainable, frozen) nested dicts with disjoint leaves; a prefix naming no param is an
  error (a typo would otherwise silently train what was meant to stay fixed)."""
  flat = traverse_util.flatten_dict(dict(params), keep_empty_nodes=False)
  for p in prefixes:
    if not any(_frozen(path, [p]) for path in flat):
      raise ValueError(f"freeze: {p!r} names no parameter; top-level names are "
                       f"{sorted({path[0] for path in flat})}")
  trainable = {k: v for k, v in flat.items() if not _frozen(k, prefixes)}
  frozen = {k: v for k, v in flat.items() if _frozen(k, prefixes)}
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable, frozen) -> Dict[str, Any]:
  """The full params: the union of two disjoint trees."""
  if not frozen:
    return trainable
  flat = traverse_util.flatten_dict(dict(trainable))
  flat.update(traverse_util.flatten_dict(dict(frozen)))
  return traverse_util.unflatten_dict(flat)


def contrastive_only(cfg: ModelConfig) -> Tuple[str, ...]:
  """The params that only the contrastive loss uses, for this model's pooler layout.

  Cascade / parallel: the contrastive pooler and its norm, the image projection. Single
  (open_clip): only the projection (pooler query 0 shares one array with the decoder's queries).
  Always: the temperature, and the text tower's CLS embedding, final norm and projection. The
  CLS token comes last, so causal attention keeps it out of every text position the decoder
  reads. (Its row of the text position table shares an array with the text positions: it
  trains, but no loss gives it a gradient.)
  """
  paths = ["logit_scale", "pooling/proj", "text/cls_embedding", "text/ln_final", "text/proj"]
  if cfg.pooler.layout != "single":
    paths += ["pooling/contrastive_pooler", "pooling/ln_contrastive"]
  return tuple(paths)


def embedding_path() -> Tuple[str, ...]:
  """Every param the image and text embeddings are computed from: the image encoder, both
  poolers and their projection, the token embedding, the unimodal text layers with their CLS
  token, and the temperature. Only the multimodal decoder (cross-attention layers and, when
  untied, its output projection) stays trainable, so a caption fine-tune leaves zero-shot
  classification and retrieval exactly as they were. (With tied embeddings the decoder's output
  projection is the frozen token embedding.)"""
  return ("visual", "pooling", "token_embedding", "text", "logit_scale")
