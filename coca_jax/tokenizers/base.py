"""What every tokenizer shares: packing token ids into fixed-length rows, and trimming them back.

A row is `[bos] + ids + [eos]`, cut to `length` with the end token kept in the last slot (so the
model always sees where a caption ends), then right-padded with `pad_id`.
"""
import abc
from typing import Iterable, List, Sequence, Union

import numpy as np


class Tokenizer(abc.ABC):
  """The common interface: `encode(texts, length)`, `decode(ids)`, pad/bos/eos ids, vocab size."""
  pad_id: int
  bos_id: int
  eos_id: int
  vocab_size: int

  @abc.abstractmethod
  def tokenize(self, text: str) -> List[int]:
    """Ids of one text, without start or end tokens.

    Args:
      text: one caption, a Python str (not an array).

    Returns:
      The ids as Python ints, as many as the text needs; `encode` packs them into int32
      (B, length) rows.
    """

  @abc.abstractmethod
  def detokenize(self, ids: Sequence[int]) -> str:
    """Text of ids that hold no start, end or padding tokens."""

  @abc.abstractmethod
  def save(self, directory) -> dict:
    """Writes the files needed to rebuild this tokenizer; returns a spec for `tokenizers.load`."""

  def encode(self, texts: Union[str, Iterable[str]], length: int) -> np.ndarray:
    """int32 (B, length): start token, ids, end token (kept when cut), padding.

    `texts` is one str (then B = 1) or B of them. Raises ValueError when `length` < 2.
    """
    if length < 2:
      raise ValueError(f"text length {length}: a tokenized text needs at least 2 positions "
                       "(start and end tokens)")
    if isinstance(texts, str):
      texts = [texts]
    texts = list(texts)
    out = np.full((len(texts), length), self.pad_id, np.int32)
    for row, text in zip(out, texts):
      ids = [self.bos_id] + self.tokenize(text) + [self.eos_id]
      if len(ids) > length:
        ids = ids[:length]
        ids[-1] = self.eos_id
      row[:len(ids)] = ids
    return out

  def decode(self, ids) -> str:
    """Text of one row of ids: drops a leading start token, stops at the first end token.

    Ids outside the vocabulary (a model's embedding table may be larger) are dropped.
    """
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    ids = [i for i in ids if 0 <= i < self.vocab_size]
    if ids and ids[0] == self.bos_id:
      ids = ids[1:]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    else:  # no end token: whatever trails is padding
      while ids and ids[-1] == self.pad_id:
        ids.pop()
    return self.detokenize(ids)
