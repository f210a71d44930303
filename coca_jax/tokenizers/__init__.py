"""Tokenizers behind one interface, and `load(spec)` to get one from a config.

Modules:
  base.py             `Tokenizer`: the interface, and packing ids into fixed-length int32 rows
  clip_bpe.py         `ClipBpeTokenizer`: CLIP's byte-level BPE, the ids of open_clip's tokenizer
  sentencepiece.py    `SentencePieceTokenizer`, and `train` (a SentencePiece model from captions)
  __main__.py         `python -m coca_jax.tokenizers train` (below)
  coca_shapes.model   the shipped SentencePiece model of the embedded dataset (`EMBEDDED_MODEL`)

Every tokenizer has `encode(texts, length) -> int32 (B, length)` (start token, ids, end token
kept when cut, padding), `decode(ids) -> str`, `pad_id`, `bos_id`, `eos_id`, `vocab_size`, and
`save(directory)`, which writes what is needed to rebuild it (so it can travel with exported
params) and returns its spec.

Specs understood by `load`:
  "embedded"                  the SentencePiece model trained on the embedded shapes dataset
                              (shipped in this package; configs/tiny.py uses it)
  "clip_bpe"                  CLIP's BPE, vocabulary read from the installed open_clip package
  "clip_bpe:PATH"             CLIP's BPE, vocabulary file bpe_simple_vocab_16e6.txt.gz at PATH
  "PATH.model", "sentencepiece:PATH"    a SentencePiece model
  "DIR"                       a directory written by `save` (holds tokenizer.json)
  {"kind": ..., "path": ...}  the same as a dict; a relative path is relative to `base_dir`

Train a SentencePiece model from a dataset's captions:
  python -m coca_jax.tokenizers train --dataset=coca_shapes --vocab_size=1000 --output=x.model
(the shipped coca_shapes.model was made by exactly this command: BPE, 580 pieces with byte
fallback, pad=0 unk=1 bos=2 eos=3, case folded.)
"""
import json
from typing import Any, Optional

from etils import epath

from coca_jax.tokenizers.base import Tokenizer
from coca_jax.tokenizers.clip_bpe import ClipBpeTokenizer
from coca_jax.tokenizers.sentencepiece import SentencePieceTokenizer

EMBEDDED_MODEL = epath.resource_path("coca_jax.tokenizers") / "coca_shapes.model"

__all__ = ["Tokenizer", "ClipBpeTokenizer", "SentencePieceTokenizer", "load", "EMBEDDED_MODEL"]


def load(spec: Any = "embedded", base_dir: Optional[epath.PathLike] = None) -> Tokenizer:
  """A tokenizer from a spec (see the module docstring); a Tokenizer is returned as it is.

  Raises:
    ValueError: a string spec that is none of the forms above, or an unknown dict "kind".
  """
  if isinstance(spec, Tokenizer):
    return spec
  if spec is None or spec == "embedded":
    return SentencePieceTokenizer(EMBEDDED_MODEL)
  if isinstance(spec, str):
    kind, _, path = spec.partition(":")
    if kind in ("clip_bpe", "sentencepiece"):
      return load({"kind": kind, "path": path or None}, base_dir)
    if spec.endswith(".model"):
      return SentencePieceTokenizer(spec)
    if (epath.Path(spec) / "tokenizer.json").exists():
      directory = epath.Path(spec)
      return load(json.loads((directory / "tokenizer.json").read_text()), base_dir=directory)
    raise ValueError(f"unknown tokenizer spec {spec!r}: expected 'embedded', 'clip_bpe[:PATH]', "
                     "a .model file, 'sentencepiece:PATH' or a directory with tokenizer.json")
  spec = dict(spec)
  path = spec.get("path")
  if path and base_dir is not None and not epath.Path(path).is_absolute():
    path = epath.Path(base_dir) / path
  if spec["kind"] == "clip_bpe":
    return ClipBpeTokenizer(path)
  if spec["kind"] == "sentencepiece":
    return SentencePieceTokenizer(path or EMBEDDED_MODEL)
  if spec["kind"] == "embedded":
    return SentencePieceTokenizer(EMBEDDED_MODEL)
  raise ValueError(f"unknown tokenizer kind {spec['kind']!r} (clip_bpe, sentencepiece, embedded)")
