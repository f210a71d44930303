"""SentencePiece tokenizers: loading, and training one from captions.

Our models follow one id convention, checked on load: pad=0, unk=1, bos(start)=2, eos(end)=3.
"""
import io
import json
from typing import Iterable, List, Sequence

from etils import epath
import sentencepiece as spm

from coca_jax.tokenizers.base import Tokenizer

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_FILE = "sentencepiece.model"


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (given as a path or as the bytes of the .model file)."""

  def __init__(self, model):
    if not isinstance(model, bytes):
      model = epath.Path(model).read_bytes()
    self.model_bytes = model
    self._sp = spm.SentencePieceProcessor(model_proto=model)
    self.pad_id, self.bos_id = self._sp.pad_id(), self._sp.bos_id()
    self.eos_id, self.unk_id = self._sp.eos_id(), self._sp.unk_id()
    self.vocab_size = self._sp.get_piece_size()
    if min(self.pad_id, self.bos_id, self.eos_id) < 0:
      raise ValueError(f"SentencePiece model needs pad, bos and eos ids; has pad={self.pad_id} "
                       f"bos={self.bos_id} eos={self.eos_id} (train with `python -m "
                       "coca_jax.tokenizers train`)")

  def tokenize(self, text: str) -> List[int]:
    """Ids of one text (a str, not an array) from the model, without start or end tokens;
    `encode` packs them into int32 (B, length) rows."""
    return self._sp.encode(text)

  def detokenize(self, ids: Sequence[int]) -> str:
    """Text of ids, padding ids dropped before the model decodes them."""
    return self._sp.decode([i for i in ids if i != self.pad_id])

  def save(self, directory) -> dict:
    """Writes the model as sentencepiece.model and tokenizer.json into `directory` (created if
    missing); returns {"kind": "sentencepiece", "path": MODEL_FILE}, relative to `directory`."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(self.model_bytes)
    spec = {"kind": "sentencepiece", "path": MODEL_FILE}
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    return spec


def train(texts: Iterable[str], vocab_size: int, *, model_type: str = "bpe") -> bytes:
  """Trains a model on `texts` with our id convention; returns the .model file's bytes.

  `vocab_size` is an upper bound: a corpus with few distinct words gives fewer pieces (the model's
  embedding table may be larger than the tokenizer's vocabulary, never smaller). BPE is the
  default because on a small caption vocabulary it keeps every word whole, where unigram stops
  early with word fragments (on the embedded dataset: 17 vs 40 tokens for the longest caption).
  """
  out = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(t for t in texts if t and t.strip()), model_writer=out,
      vocab_size=vocab_size, hard_vocab_limit=False, model_type=model_type,
      character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      # Case folded; with byte fallback (its 256 byte pieces need a vocabulary of 384 or more)
      # any text encodes without unknown pieces and decodes back.
      normalization_rule_name="nmt_nfkc_cf", byte_fallback=vocab_size >= 384, num_threads=1,
      minloglevel=2,
      # Deterministic: no sampling of the input corpus.
      input_sentence_size=0, shuffle_input_sentence=False)
  return out.getvalue()
