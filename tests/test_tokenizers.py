"""Tokenizers: the common interface, SentencePiece (shipped model, training command), CLIP BPE
(exact ids against open_clip, no open_clip needed once saved)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from coca_jax import tokenizers
from coca_jax.tokenizers import clip_bpe, sentencepiece

try:  # at collection: importing torch's triton once TensorFlow's runtime is up crashes
  import open_clip
except ImportError:
  open_clip = None

CORPUS = [
    "a photo of a cat.",
    "A Photo Of A CAT!!!",
    "",
    "   \t\n  ",
    "Hello, World!! &amp; &lt;b&gt;bold&lt;/b&gt; &amp;amp; &#39;quoted&#39; &nbsp;x",
    "naïve café résumé — “smart quotes” ‘single’ … ellipsis",
    "東京タワー 北京 서울 Москва Αθήνα עברית العربية हिन्दी",
    "emoji 😀👍🏽 👨‍👩‍👧 family ❤️ flags 🇫🇷",
    "don't won't it's we're they've I'm you'll he'd",
    "123,456.78 3.14159 #hashtag @user http://example.com/a?b=c&d=e",
    "ﬁ ligature, İstanbul, ß, Σίσυφος, ǅ",
    "mojibake: Ã©tÃ© â€” fixed by ftfy",
    "<start_of_text> literal specials <end_of_text>",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x1cseparators",
    "punctuation!?!?... ((nested)) [brackets] {braces} ~~~ ^_^ ;-) :-D",
    "a very long caption " * 60,
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "zero\u200bwidth\u200cjoiners\u200dhere and soft\u00adhyphen",
]


@pytest.fixture(scope="module")
def spm_tokenizer():
  return tokenizers.load("embedded")


def test_embedded_sentencepiece_conventions(spm_tokenizer):
  tok = spm_tokenizer
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  assert tok.vocab_size <= 1000  # fits configs/tiny.py's vocabulary
  ids = tok.encode(["a small red circle on the left", "a big blue square"], 24)
  assert ids.dtype == np.int32 and ids.shape == (2, 24)
  assert ids[0, 0] == tok.bos_id
  n = int(np.argmax(ids[0] == tok.eos_id))
  assert n == 8  # every caption word is one piece
  assert (ids[0, n + 1:] == tok.pad_id).all()
  assert tok.decode(ids[0]) == "a small red circle on the left"
  assert tok.decode(ids[1]) == "a big blue square"


def test_truncation_keeps_end_token(spm_tokenizer):
  tok = spm_tokenizer
  ids = tok.encode("a small red circle " * 20, 10)
  assert ids.shape == (1, 10) and ids[0, 0] == tok.bos_id and ids[0, -1] == tok.eos_id
  assert tok.pad_id not in ids[0]
  assert tok.decode(ids[0]) == "a small red circle a small red circle"
  # Too short for the start and end tokens: a clear error, not an index error inside.
  with pytest.raises(ValueError, match="at least 2"):
    tok.encode("a", 0)


def test_sentencepiece_any_text_roundtrips(spm_tokenizer):
  # Byte fallback: unseen characters are not unknown; case is folded.
  for text in ["Unknown WORDS", "東京 😀", "naïve café"]:
    decoded = spm_tokenizer.decode(spm_tokenizer.encode(text, 64)[0])
    assert decoded == text.lower()
  assert spm_tokenizer.decode([2, 0, 0]) == ""
  assert spm_tokenizer.decode(np.array([[5, 6, 3, 7]]))  # 2-D with one row is fine


def test_load_specs_and_save(tmp_path, spm_tokenizer):
  path = str(tokenizers.EMBEDDED_MODEL)
  for spec in [path, f"sentencepiece:{path}", {"kind": "sentencepiece", "path": path},
               {"kind": "embedded"}, None]:
    tok = tokenizers.load(spec)
    assert np.array_equal(tok.encode(CORPUS, 24), spm_tokenizer.encode(CORPUS, 24))
  spec = spm_tokenizer.save(tmp_path / "tok")
  assert spec == {"kind": "sentencepiece", "path": "sentencepiece.model"}
  again = tokenizers.load(str(tmp_path / "tok"))
  assert np.array_equal(again.encode(CORPUS, 24), spm_tokenizer.encode(CORPUS, 24))
  assert tokenizers.load(spm_tokenizer) is spm_tokenizer
  with pytest.raises(ValueError, match="unknown tokenizer"):
    tokenizers.load("no-such-thing")


def test_train_is_deterministic_and_follows_id_convention():
  texts = [f"a {c} {s} number {i}" for i in range(200) for c in ("red", "blue")
           for s in ("box", "ball")]
  a, b = sentencepiece.train(texts, 400), sentencepiece.train(texts, 400)
  assert a == b
  tok = sentencepiece.SentencePieceTokenizer(a)
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
  assert tok.decode(tok.encode("a red ball number 7", 16)[0]) == "a red ball number 7"


def test_train_command_on_jsonl(tmp_path):
  lines = [json.dumps({"image": f"{i}.jpg", "caption": f"a {c} thing {i % 7}"})
           for i in range(300) for c in ("green", "purple")]
  (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n\xff bad line\n")
  out = tmp_path / "models" / "mine.model"
  result = subprocess.run(
      [sys.executable, "-m", "coca_jax.tokenizers", "train", "--dataset=mine", "--format=jsonl",
       f"--path={tmp_path / 'pairs.jsonl'}", "--vocab_size=200", f"--output={out}"],
      capture_output=True, text=True, check=True, timeout=120)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["captions"] == 600 and out.exists()
  tok = tokenizers.load(str(out))
  assert tok.decode(tok.encode("a purple thing 3", 12)[0]) == "a purple thing 3"


# ---- CLIP BPE ----

@pytest.fixture(scope="module")
def clip_tokenizers():
  if open_clip is None:
    pytest.skip("open_clip is not installed")
  return clip_bpe.ClipBpeTokenizer(), open_clip.get_tokenizer("coca_ViT-B-32")


def test_clip_bpe_matches_open_clip(clip_tokenizers):
  ours, theirs = clip_tokenizers
  assert (ours.vocab_size, ours.bos_id, ours.eos_id, ours.pad_id) == (49408, 49406, 49407, 0)
  assert theirs.context_length == clip_bpe.CONTEXT_LENGTH == 76
  expected = theirs(CORPUS).numpy()
  got = ours.encode(CORPUS, 76)
  assert got.dtype == np.int32
  for text, row_got, row_expected in zip(CORPUS, got, expected):
    assert row_got.tolist() == row_expected.tolist(), text
  # Other lengths, including truncation that keeps the end token.
  for length in (5, 16, 77):
    assert np.array_equal(ours.encode(CORPUS, length), theirs(CORPUS, length).numpy())


def test_clip_bpe_decodes_like_open_clip(clip_tokenizers):
  ours, theirs = clip_tokenizers
  for text in CORPUS[:12]:
    ids = ours.encode(text, 76)[0]
    body = [int(i) for i in ids[1:list(ids).index(ours.eos_id)]]
    expected = theirs.decode(body).strip()
    assert ours.decode(ids) == expected.replace("<start_of_text>", "").replace(
        "<end_of_text>", "").strip() or not body


def test_clip_bpe_travels_without_open_clip(tmp_path, clip_tokenizers):
  ours, _ = clip_tokenizers
  spec = ours.save(tmp_path / "export")
  assert spec == {"kind": "clip_bpe", "path": clip_bpe.VOCAB_FILE}
  # A fresh interpreter where open_clip and torch cannot be imported.
  code = (
      "import sys, json; sys.modules['open_clip'] = None; sys.modules['torch'] = None\n"
      "from coca_jax import tokenizers\n"
      f"tok = tokenizers.load({str(tmp_path / 'export')!r})\n"
      f"print(json.dumps(tok.encode({CORPUS!r}, 76).tolist()))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       timeout=120)
  assert np.array_equal(np.array(json.loads(out.stdout)), ours.encode(CORPUS, 76))
  assert np.array_equal(tokenizers.load(f"clip_bpe:{tmp_path / 'export' / clip_bpe.VOCAB_FILE}")
                        .encode(CORPUS, 76), ours.encode(CORPUS, 76))


def test_clip_bpe_matches_open_clip_on_random_text(clip_tokenizers):
  ours, theirs = clip_tokenizers
  rng = np.random.default_rng(0)
  pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \t\n.,;:!?'\"()[]"
               "{}<>/\\|@#$%^&*-_=+~`éèàüößçñøåæœÉÀ—–…“”‘’«»¿¡€£¥©®™°±×÷東京大阪中文字한국어ひら"
               "がなカタカナабвгдеёжзαβγδεζηθ")
          + ["😀", "👍🏽", "❤️", "🇫🇷", "\u200b", "\u200d", "&amp;", "&lt;", "&#39;", "&nbsp;",
             "'s", "'ll", "Ã©", "â€™", "\x00", "\x1c", "\u2028", "\ufeff", "ﬁ", "İ"])
  texts = ["".join(rng.choice(pool, size=rng.integers(0, 120))) for _ in range(500)]
  np.testing.assert_array_equal(ours.encode(texts, 76), theirs(texts).numpy())
