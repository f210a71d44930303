"""What the evaluators share: batch sizes that fit the mesh, global arrays brought to every
process, eval datasets named in configs, progress lines for long runs."""
import functools
import math
import time
from typing import Any, Dict, Optional

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from coca_jax import data
from coca_jax.data import records
from coca_jax.data.config import resolve as resolve_data

BATCH_AXES = ("slice", "data", "fsdp")


def batch_unit(mesh) -> int:
  """Global batches must be a multiple of this: the devices the batch is split over, and the
  processes (each feeds its own equal share)."""
  devices = math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)
  return math.lcm(devices, jax.process_count())


def fit_batch(requested: int, mesh, examples: Optional[int] = None) -> int:
  """`requested` (no more than the examples needed) rounded up to a multiple of batch_unit."""
  unit = batch_unit(mesh)
  if examples is not None:
    requested = min(requested, examples)
  return max(unit, -(-requested // unit) * unit)


def replicated(mesh):
  """The sharding that keeps a whole copy of an array on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


@functools.lru_cache(maxsize=16)
def _replicate(mesh):
  """One jitted copy-to-every-device per mesh, so that its programs are compiled once per
  input structure, not at every call."""
  return jax.jit(lambda t: t, out_shardings=replicated(mesh))


def gather(tree, mesh):
  """Global (sharded) arrays -> the same values as NumPy on every process."""
  tree = _replicate(mesh)(tree)
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def main_process() -> bool:
  """True on process 0, the one that prints and writes files."""
  return jax.process_index() == 0


def dataset_spec(config, dataset: Any = None) -> Any:
  """A dataset spec from a config value: "" / None -> `config.data.eval`; a dict -> as it is;
  "name" or "name:split" -> a TFDS dataset; "images:PATH" -> a pile of images (a folder, a
  glob or a list file; evals/image_files.py); "folder:PATH[:split]" -> an image folder, whose
  class names follow `config.evals.class_names` unless the spec gives its own."""
  if dataset is None or dataset == "":
    dataset = resolve_data(config.data)["eval"]
  if hasattr(dataset, "to_dict"):
    spec = dataset.to_dict()
  elif isinstance(dataset, dict):
    spec = dict(dataset)  # a copy: callers add fields
  else:
    name, _, split = str(dataset).partition(":")
    if name == "images":
      return {"format": "images", "path": split}
    if name != "folder":
      return {"name": name, "split": split or _default_split(name)}
    path, _, split = split.rpartition(":") if split.count(":") else (split, "", "")
    spec = {"format": "folder", "path": path, "split": split or "all"}
  if spec.get("format") == "folder" and not spec.get("class_names"):
    evals = config.get("evals") if hasattr(config, "get") else None
    spec["class_names"] = (evals.get("class_names", "") if evals is not None else "") or ""
  return spec


def _default_split(name: str) -> str:
  return {"imagenet_v2": "test", "imagenet2012": "validation",
          "coca_shapes": "validation"}.get(name.split("/")[0], "validation")


def clean_captions(raw) -> list:
  """The readable captions of a record (bad ones dropped)."""
  out = []
  for caption in raw:
    try:
      out.append(records.clean_caption(caption))
    except records.BadRecord:
      continue
  return out


class Progress:
  """`name: done/total (rate/s, ETA)` lines on process 0, at most every `every_s` seconds."""

  def __init__(self, name: str, total: int, unit: str = "examples", every_s: float = 10.0):
    self.name, self.total, self.unit, self.every_s = name, total, unit, every_s
    self.start = self.last = time.perf_counter()
    self.done = 0

  def update(self, count: int):
    """Adds `count` finished units; prints a line when `every_s` seconds have passed since the
    last one, or when the total is reached."""
    self.done += count
    now = time.perf_counter()
    if main_process() and (now - self.last >= self.every_s or self.done >= self.total):
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      print(f"{self.name}: {min(self.done, self.total)}/{self.total} {self.unit} "
            f"({rate:.1f}/s, ETA {int(eta // 60)}m{int(eta % 60):02d}s)", flush=True)
      self.last = now


def scalars(results: Dict[str, Any]) -> Dict[str, float]:
  """The numbers among results (for TensorBoard)."""
  return {k: float(v) for k, v in results.items()
          if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}


def eval_iterator(config, tokenizer, batch_size: int, dataset=None):
  """The eval iterator over `dataset` (see dataset_spec) for this process."""
  spec = dataset_spec(config, dataset)
  if spec.get("format") == "folder":
    from coca_jax.evals import folder  # pylint: disable=import-outside-toplevel
    return folder.build_eval_iterator(config.data, spec, batch_size, tokenizer)
  if spec.get("format") == "images":
    from coca_jax.evals import image_files  # pylint: disable=import-outside-toplevel
    return image_files.build_eval_iterator(config.data, spec, batch_size, tokenizer)
  return data.build_eval_iterator(
      config.data, global_batch_size=batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), tokenizer=tokenizer, dataset=spec)
