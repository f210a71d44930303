"""What a prepared dataset was prepared from, so that a changed source is never reused, nor
rebuilt, without saying so.

A prepared (TFDS) dataset directory gets `prepared_from.json`: the size and modification time
of every input file (people's own CSV / JSONL / shard files; the archives of a manual
directory) and the size of each prepared split. Before a prepared copy is reused, its inputs
are described again; any difference is refused with the reason and the option that prepares
the dataset again. Image files that a CSV or JSONL names are not described (a collection may
hold millions): change the table, or prepare again, when they change.
"""
import json
import os
from typing import Dict, Iterable, List, Optional

from absl import logging
from etils import epath

FILE = "prepared_from.json"
REPREPARE = ("--config.data.reprepare=True (train.py, eval.py), or --reprepare "
             "(python -m coca_jax.data.convert)")

# Split sizes the TFDS catalog documents (tensorflow.org/datasets/catalog), for datasets
# prepared from files people supply themselves.
DOCUMENTED_SPLITS = {
    "imagenet2012": {"train": 1_281_167, "validation": 50_000},
    "imagenet2012_real": {"validation": 50_000},
    "imagenet_v2": {"test": 10_000},
    "imagenet_sketch": {"test": 50_889},
    "imagenet_a": {"test": 7_500},
    "imagenet_r": {"test": 30_000},
}


def describe(paths: Iterable) -> Dict[str, Dict]:
  """{path: {"size": bytes, "mtime": seconds since the epoch}} of each file ({"missing": True}
  if absent)."""
  out = {}
  for path in paths:
    path = epath.Path(path)
    try:
      if "://" in str(path):
        stat = path.stat()
        out[str(path)] = {"size": int(stat.length), "mtime": int(stat.mtime)}
      else:  # nanoseconds: an archive rewritten within a second, at the same padded size
        stat = os.stat(path)
        out[str(path)] = {"size": int(stat.st_size), "mtime": stat.st_mtime_ns / 1e9}
    except (FileNotFoundError, OSError):
      out[str(path)] = {"missing": True}
  return out


def differences(recorded: Dict[str, Dict], current: Dict[str, Dict]) -> List[str]:
  """One line per input that was added, removed or changed since the recorded preparation."""
  lines = []
  for path in sorted(set(recorded) | set(current)):
    old, new = recorded.get(path), current.get(path)
    if old == new:
      continue
    if old is None:
      lines.append(f"{path}: new input")
    elif new is None or new.get("missing"):
      lines.append(f"{path}: gone")
    else:
      lines.append(f"{path}: size {old.get('size')} -> {new.get('size')} bytes, modified "
                   f"{old.get('mtime')} -> {new.get('mtime')}")
  return lines


def record(dataset_dir, inputs: Dict[str, Dict], splits: Dict[str, int]) -> None:
  """Writes `prepared_from.json` (inputs as `describe` gives them, split sizes) in the
  prepared dataset's directory."""
  (epath.Path(dataset_dir) / FILE).write_text(json.dumps(
      {"inputs": inputs, "splits": splits}, indent=1))


def recorded(dataset_dir) -> Optional[Dict]:
  """{"inputs", "splits"} as `record` wrote them, or None for a copy prepared before."""
  path = epath.Path(dataset_dir) / FILE
  return json.loads(path.read_text()) if path.exists() else None


def check(dataset_dir, name: str, inputs: Dict[str, Dict]) -> None:
  """Refuses a prepared copy whose inputs changed since it was prepared.

  Raises:
    ValueError: naming every changed input and the option that prepares the dataset again.
  """
  saved = recorded(dataset_dir)
  if saved is None:
    logging.warning("%s: prepared at %s before its inputs were recorded; it is used as it is. "
                    "Prepare it again (%s) to have changes to its source checked.", name,
                    dataset_dir, REPREPARE)
    return
  lines = differences(saved["inputs"], inputs)
  if lines:
    raise ValueError(
        f"{name}: the prepared copy at {dataset_dir} was made from other files than there are "
        "now:\n  " + "\n  ".join(lines) + f"\nIt is neither used nor rebuilt silently: prepare "
        f"it again with {REPREPARE}, or restore the files it was made from.")


def check_documented_sizes(name: str, splits: Dict[str, int]) -> List[str]:
  """Warnings for splits smaller than the TFDS catalog documents."""
  documented = DOCUMENTED_SPLITS.get(name.split("/")[0].split(":")[0], {})
  warnings = [f"{name}/{split}: {splits[split]:,} examples, the TFDS catalog documents "
              f"{documented[split]:,}" for split in splits
              if split in documented and splits[split] < documented[split]]
  for line in warnings:
    logging.warning("%s (an incomplete source?)", line)
    print(f"warning: {line} (an incomplete source?)", flush=True)
  return warnings
