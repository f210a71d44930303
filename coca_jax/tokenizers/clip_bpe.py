"""CLIP's byte-level BPE, giving exactly the ids of open_clip's tokenizer, without torch.

The vocabulary comes from CLIP's merges file (`bpe_simple_vocab_16e6.txt.gz`): read from a path,
or from the open_clip package when it is installed. `save` copies the file next to exported params
so that a loaded model needs neither open_clip nor torch.

Ids: 256 byte symbols, the same 256 ending a word ("</w>"), 48,894 merges, then the start
(49406) and end (49407) tokens: 49,408 in all. Padding is 0 (which is also "!").
"""
import functools
import gzip
import html
import json
from typing import Dict, List, Sequence, Tuple

from etils import epath
import ftfy
import regex

from coca_jax.tokenizers.base import Tokenizer

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
START, END = "<start_of_text>", "<end_of_text>"
CONTEXT_LENGTH = 76  # open_clip's CoCa text context


def open_clip_vocab_path() -> epath.Path:
  """The merges file shipped inside the open_clip package (ImportError when not installed)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.find_spec("open_clip")  # locate, without importing torch
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("open_clip is not installed: give the BPE vocabulary file's path")
  return epath.Path(list(spec.submodule_search_locations)[0]) / VOCAB_FILE


@functools.lru_cache()
def byte_symbols() -> Dict[int, str]:
  """A printable character per byte: printable Latin-1 bytes keep theirs, others get 256+k.

  The order (printable bytes first, then the others) is the order of the first 256 ids.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  table = {b: chr(b) for b in printable}
  table.update({b: chr(256 + k) for k, b in enumerate(others)})
  return table


def normalize(text: str) -> str:
  """open_clip's "lower" cleaning: fix mojibake, unescape HTML twice, squeeze whitespace, lower.

  The steps of open_clip.tokenizer's `_clean_lower` (`basic_clean`: ftfy.fix_text, then
  html.unescape twice, strip; `whitespace_clean`: runs of whitespace to one space; lower case).
  `text` is one caption, a str (not an array); `ClipBpeTokenizer.encode` makes int32 (B, length)
  rows of ids from the result.
  """
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return " ".join(text.split()).lower()


class ClipBpeTokenizer(Tokenizer):
  """CLIP BPE tokenizer; `vocab_path` defaults to the file inside the open_clip package."""

  def __init__(self, vocab_path=None):
    self.vocab_path = epath.Path(vocab_path) if vocab_path else open_clip_vocab_path()
    lines = gzip.decompress(self.vocab_path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    symbols = list(byte_symbols().values())
    pieces = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
    self.ids = {piece: i for i, piece in enumerate(pieces)}
    self.pieces = pieces
    self.ranks = {m: r for r, m in enumerate(merges)}
    self.bytes_of = {s: b for b, s in byte_symbols().items()}
    self.bos_id, self.eos_id, self.pad_id = self.ids[START], self.ids[END], 0
    self.vocab_size = len(pieces)
    # A word is a special token, a contraction, a run of letters, one digit, or a run of other
    # non-space characters.
    self._words = regex.compile(
        rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|\p{{L}}+|\p{{N}}|[^\s\p{{L}}\p{{N}}]+",
        regex.IGNORECASE)
    self._bpe = functools.lru_cache(maxsize=100_000)(self._merge_word)

  def _merge_word(self, word: str) -> Tuple[str, ...]:
    """Applies merges to one word's byte symbols, lowest rank first, all occurrences at once."""
    if word in (START, END):
      return (word,)
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      pairs = set(zip(parts, parts[1:]))
      best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return tuple(parts)

  def tokenize(self, text: str) -> List[int]:
    """Ids of one text, as open_clip's `SimpleTokenizer.encode` gives them.

    The text is `normalize`d, split into words (special tokens, contractions, letter runs,
    single digits, other symbol runs), and each word's UTF-8 bytes are merged by BPE.

    Args:
      text: one caption, a str (not an array).

    Returns:
      Python ints in [0, 49408), without start or end tokens (unless the text itself holds
      "<start_of_text>" or "<end_of_text>"); `encode` packs them into int32 (B, length) rows.
    """
    table = byte_symbols()
    ids = []
    for word in self._words.findall(normalize(text)):
      if word not in (START, END):
        word = "".join(table[b] for b in word.encode("utf-8"))
      ids.extend(self.ids[p] for p in self._bpe(word))
    return ids

  def detokenize(self, ids: Sequence[int]) -> str:
    """Text of ids in [0, vocab_size): start and end tokens skipped, each "</w>" a space, the
    bytes decoded as UTF-8 (invalid sequences become U+FFFD), ends stripped. Padding (id 0, "!")
    is not skipped here; `decode` trims it."""
    data = bytearray()
    for i in ids:
      if i in (self.bos_id, self.eos_id):
        continue
      piece = self.pieces[i]
      end_of_word = piece.endswith("</w>")
      data.extend(self.bytes_of[c] for c in piece.removesuffix("</w>"))
      if end_of_word:
        data.extend(b" ")
    return data.decode("utf-8", errors="replace").strip()

  def save(self, directory) -> dict:
    """Copies the vocabulary file into `directory` (created if missing) and writes
    tokenizer.json; returns {"kind": "clip_bpe", "path": VOCAB_FILE}, relative to `directory`."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / VOCAB_FILE).write_bytes(self.vocab_path.read_bytes())
    spec = {"kind": "clip_bpe", "path": VOCAB_FILE}
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    return spec
