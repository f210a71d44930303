"""People's own image-caption files, read as raw records.

Formats (`format` in a dataset spec):
  csv, tsv     open_clip's layout: an image-path column and a caption column (names and
               separator configurable); relative paths are relative to the file's directory.
  jsonl        one JSON object per line, {"image": path, "caption": text} (keys configurable).
  webdataset   img2dataset's .tar shards: NNN.jpg (or .png, .webp, ...) + NNN.txt (+ NNN.json),
               grouped by webdataset's rule (`sample_key`: "dir/NNN.jpg" -> key "dir/NNN").
  tfrecord     img2dataset's TFRecord shards: tf.train.Example with "jpg" and "txt" features.

Text files (csv, tsv, jsonl) may be UTF-8 with or without a byte-order mark, or UTF-16 /
UTF-32 with one (`open_text`); CRLF line ends are fine.

A raw record is `{"key": str, "image": bytes, "caption": str | bytes | [str, ...]}` (a JSONL
caption or a webdataset .json "caption" may be a list); an unreadable one is
`{"key": str, "error": reason}` so that the caller can count it. Paths may be local or remote
(gs://...): files are opened through etils.epath. `path` may be a file, a directory (every shard
in it), a glob, or a brace range like "shards/{00000..00099}.tar".
"""
import codecs
import csv
import io
import json
import re
import tarfile
from typing import Dict, Iterator, List, Optional

from etils import epath

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
SHARD_SUFFIX = {"webdataset": ".tar", "tfrecord": ".tfrecord", "csv": ".csv", "tsv": ".tsv",
                "jsonl": ".jsonl"}
FORMATS = tuple(SHARD_SUFFIX)
TABLES = ("csv", "tsv", "jsonl")  # rows naming image files
DEFAULT_KEYS = {  # (image key, caption key) per format
    "csv": ("filepath", "title"), "tsv": ("filepath", "title"),  # open_clip's defaults
    "jsonl": ("image", "caption"), "webdataset": ("jpg", "txt"), "tfrecord": ("jpg", "txt"),
}


def expand_paths(path: str, fmt: str) -> List[epath.Path]:
  """Sorted files named by a file, a directory, a glob or a {000..099} brace range."""
  match = re.search(r"\{(\d+)\.\.(\d+)\}", path)
  if match:
    lo, hi = match[1], match[2]
    return [epath.Path(path[:match.start()] + str(i).zfill(len(lo)) + path[match.end():])
            for i in range(int(lo), int(hi) + 1)]
  p = epath.Path(path)
  if p.is_dir():
    return sorted(f for f in p.iterdir() if f.name.endswith(SHARD_SUFFIX[fmt]))
  if any(c in path for c in "*?["):
    parent = epath.Path(path.split("*")[0].split("?")[0].split("[")[0]).parent
    return sorted(parent.glob(str(epath.Path(path).relative_to(parent))))
  return [p]


def read_file(path: str, fmt: str, *, image_key: Optional[str] = None,
              text_key: Optional[str] = None, separator: Optional[str] = None,
              start: int = 0, load_images: bool = True) -> Iterator[Dict]:
  """Raw records of one file (one shard) from record `start` on, in file order.

  `load_images=False`: csv/tsv/jsonl records carry the image path, not its bytes.
  """
  default_image, default_text = DEFAULT_KEYS[fmt]
  image_key, text_key = image_key or default_image, text_key or default_text
  path = epath.Path(path)
  if fmt in ("csv", "tsv", "jsonl"):
    records = _read_table(path, fmt, image_key, text_key, separator, load_images)
  elif fmt == "webdataset":
    records = _read_tar(path, image_key, text_key)
  elif fmt == "tfrecord":
    records = _read_tfrecord(path, image_key, text_key)
  else:
    raise ValueError(f"unknown format {fmt!r}: one of {FORMATS}")
  for i, record in enumerate(records):
    if i >= start:
      yield record


# Byte-order marks -> the codec that reads past them (Excel's "CSV UTF-8" writes UTF-8 with a
# BOM, its "Unicode Text" UTF-16 LE with one).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def text_encoding(head: bytes, name: str = "file") -> str:
  """The codec of a text file from its first bytes: UTF-8 (with or without a BOM), or UTF-16 /
  UTF-32 with a BOM. Raises ValueError for NUL bytes without a BOM (UTF-16 or UTF-32 saved
  without one), naming the encoding it looks like."""
  for bom, codec in _BOMS:
    if head.startswith(bom):
      return codec
  if b"\0" in head:
    guess = "UTF-32" if b"\0\0\0" in head else "UTF-16"
    raise ValueError(f"{name}: looks like {guess} without a byte-order mark; save it as UTF-8 "
                     "(Excel: \"CSV UTF-8\"; or `iconv -f UTF-16LE -t UTF-8`)")
  return "utf-8"


def open_text(path) -> io.TextIOWrapper:
  """A text file in whichever encoding `text_encoding` finds, universal newlines left to the
  caller (newline=""); undecodable bytes survive as surrogates (UTF-8), so one bad line
  spoils only itself."""
  path = epath.Path(path)
  with path.open("rb") as f:
    codec = text_encoding(f.read(4096), str(path))
  f = path.open("rb")
  return io.TextIOWrapper(f, encoding=codec, errors="surrogateescape", newline="")


def _load(base: epath.Path, name: str, load: bool = True) -> Dict:
  image_path = epath.Path(name) if epath.Path(name).is_absolute() or "://" in name \
      else base / name
  if not load:
    return {"image_path": str(image_path)}
  return read_image(image_path)


def read_image(path) -> Dict:
  """{"image": the file's bytes}, or {"error": "image_missing"}."""
  try:
    return {"image": epath.Path(path).read_bytes()}
  except (FileNotFoundError, IsADirectoryError, PermissionError):
    return {"error": "image_missing"}


def captions_of(raw: Dict) -> List:
  """A raw record's captions as a list (a JSONL line or a webdataset .json may hold several)."""
  caption = raw.get("caption")
  return list(caption) if isinstance(caption, (list, tuple)) else [caption]


def group_by_image(raws: Iterator[Dict]) -> Iterator[Dict]:
  """Table rows (read with load_images=False) naming the same image path become one record
  holding all their captions, in the order images first appear; errors pass through first."""
  images: Dict[str, Dict] = {}
  for raw in raws:
    if "error" in raw:
      yield raw
      continue
    entry = images.setdefault(raw["image_path"], {"key": raw["key"],
                                                  "image_path": raw["image_path"],
                                                  "caption": []})
    entry["caption"] += captions_of(raw)
  yield from images.values()


def _read_table(path: epath.Path, fmt, image_key, text_key, separator,
                load_images) -> Iterator[Dict]:
  # Undecodable bytes survive as surrogates, so a bad caption spoils only its own row.
  with open_text(path) as text:
    if fmt == "jsonl":
      for n, line in enumerate(text):
        if not line.strip():
          continue
        key = f"{path.name}:{n}"
        try:
          row = json.loads(line)
          yield {"key": key, "caption": row[text_key],
                 **_load(path.parent, row[image_key], load_images)}
        except (ValueError, KeyError, TypeError):
          yield {"key": key, "error": "record_invalid"}
      return
    sep = separator or ("\t" if fmt == "tsv" else ",")
    reader = csv.DictReader(text, delimiter=sep)
    if reader.fieldnames is None or not {image_key, text_key} <= set(reader.fieldnames):
      raise ValueError(f"{path}: columns {reader.fieldnames} lack {image_key!r} or {text_key!r} "
                       "(set image_key / text_key / separator in the dataset spec)")
    for n, row in enumerate(reader):
      key = f"{path.name}:{n}"
      if not row.get(image_key):
        yield {"key": key, "error": "record_invalid"}
        continue
      yield {"key": key, "caption": row.get(text_key) or "",
             **_load(path.parent, row[image_key], load_images)}


def sample_key(member_name: str):
  """webdataset's grouping rule: (key, extension) of a tar member, the key being the member
  path up to the first dot of its last component, directory included ("setA/0001.jpg" ->
  ("setA/0001", "jpg")); (None, None) for a name without a dot, which webdataset skips."""
  directory, _, name = member_name.rpartition("/")
  base, dot, ext = name.partition(".")
  if not dot or not base:
    return None, None
  return (f"{directory}/{base}" if directory else base), ext.lower()


def _read_tar(path: epath.Path, image_key: str, text_key: str) -> Iterator[Dict]:
  """Groups consecutive members into samples by `sample_key`, as webdataset does.

  A sample holding one part twice (`x.jpg` twice) is a bad record (`record_duplicate_part`),
  never an overwrite. A key that comes back after other samples means the shard's members are
  not grouped (all images, then all captions): one `shard_unordered` record names the shard and
  the key, and the rest of the shard is not read.
  """
  def finish(key, parts, duplicate):
    if duplicate:
      return {"key": key, "error": "record_duplicate_part", "detail": f"{path.name}: {key}"}
    image = parts.get(image_key) or next(
        (parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    caption = parts.get(text_key)
    if caption is None and "json" in parts:
      try:
        caption = json.loads(parts["json"]).get("caption")
      except (ValueError, AttributeError):
        caption = None
    if image is None or caption is None:
      return {"key": key, "error": "record_incomplete"}
    return {"key": key, "image": image, "caption": caption}

  key, parts, duplicate, seen = None, {}, False, set()
  with path.open("rb") as f:
    try:
      with tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
          if not member.isfile():
            continue
          member_key, ext = sample_key(member.name)
          if member_key is None:
            continue
          if member_key != key:
            if key is not None:
              yield finish(key, parts, duplicate)
            if member_key in seen:
              yield {"key": member_key, "error": "shard_unordered",
                     "detail": f"{path}: key {member_key!r} came back after other samples"}
              return
            seen.add(member_key)
            key, parts, duplicate = member_key, {}, False
          duplicate |= ext in parts
          parts[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError):
      if key is not None:
        yield {"key": key, "error": "shard_truncated", "detail": f"{path}: ends inside {key!r}"}
      key = None
  if key is not None:
    yield finish(key, parts, duplicate)


def _read_tfrecord(path: epath.Path, image_key: str, text_key: str) -> Iterator[Dict]:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  records = tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
  n = 0
  while True:
    try:
      data = next(records)
    except StopIteration:
      return
    except tf.errors.OpError:  # a truncated or corrupted shard ends here
      yield {"key": f"{path.name}:{n}", "error": "shard_truncated",
             "detail": f"{path}: unreadable after record {n}"}
      return
    try:
      example = tf.train.Example.FromString(data).features.feature
    except Exception:  # pylint: disable=broad-except  (protobuf's DecodeError)
      example = {}
    key = example["key"].bytes_list.value[0].decode() if "key" in example else f"{path.name}:{n}"
    n += 1
    found = image_key if image_key in example else next(
        (e for e in IMAGE_EXTENSIONS if e in example), None)
    if found is None or text_key not in example:
      yield {"key": key, "error": "record_incomplete"}
      continue
    yield {"key": key, "image": example[found].bytes_list.value[0],
           "caption": example[text_key].bytes_list.value[0]}
