"""Web-scale training reads: shards read in place, one at a time, with a small resumable state.

Each epoch visits the shards in a seeded order; the global sequence of (epoch, shard) visits is
dealt round-robin to the processes, so every process always has shards to read (even with fewer
shards than processes) and they never read the same visit. Within a shard, records are shuffled
in windows of `window` records. The state of a reader is (visits done, records done in the
current one), so a resume re-opens one shard and skips to the record: nothing is repeated or
skipped. The state belongs to one process of one process count (see `StreamIterator`).

Datasets that allow random access can take part in a streamed mixture: `IndexReader` gives each
process its strided share of their shuffled, repeated order.
"""
import hashlib
from typing import Callable, Dict, List, Optional, Sequence

from absl import logging
import grain
import numpy as np

from coca_jax.data import formats, records, shapes

NO_SCENE = np.full(shapes.SCENE_LEN, -1, np.int32)


class ShardReader:
  """One process's stream of raw records from a dataset spec's shards (files)."""

  def __init__(self, spec, seed: int, process_index: int, process_count: int,
               window: int = 256):
    self.spec, self.seed, self.window = spec, seed, window
    self.process_index, self.process_count = process_index, process_count
    self.paths = formats.expand_paths(spec.path, spec.format)
    if not self.paths:
      raise FileNotFoundError(f"{spec.name}: no {spec.format} shards at {spec.path!r}")
    self.visits, self.done = 0, 0
    self._block: List[Dict] = []
    self._records = None

  def _shard(self) -> int:
    position = self.process_index + self.visits * self.process_count
    epoch, i = divmod(position, len(self.paths))
    return int(np.random.default_rng([self.seed, epoch]).permutation(len(self.paths))[i])

  def _open(self):
    """Opens the current visit's shard at the start of the window holding record `done`."""
    start = self.done - self.done % self.window
    self._records = formats.read_file(
        self.paths[self._shard()], self.spec.format, image_key=self.spec.image_key,
        text_key=self.spec.text_key, separator=self.spec.separator, start=start)
    self._block_start = start
    self._block = []

  def next(self) -> Dict:
    """The next raw record ({"error": ...} for an unreadable one)."""
    empty_visits = 0
    while True:
      if self._records is None:
        self._open()
      offset = self.done - self._block_start
      # A resume at the very end of a shard whose length is not a multiple of the window
      # lands past the last (short) block: read on until the block holding record `done`.
      while offset >= len(self._block):
        self._block_start += len(self._block)
        try:
          self._block = [r for _, r in zip(range(self.window), self._records)]
        except (OSError, ValueError) as e:  # a missing or unreadable shard: skip the rest of it
          self.visits, self.done, self._records = self.visits + 1, 0, None
          return {"error": "shard_unreadable", "detail": str(e)}
        if not self._block:
          break
        order = np.random.default_rng(
            [self.seed, self.visits, self._block_start]).permutation(len(self._block))
        self._block = [self._block[i] for i in order]
        offset = self.done - self._block_start
      if not self._block:  # shard finished: next visit
        empty_visits = empty_visits + 1 if self.done == 0 else 0
        if empty_visits > len(self.paths):
          raise ValueError(f"{self.spec.name}: every shard at {self.spec.path!r} is empty")
        self.visits, self.done, self._records = self.visits + 1, 0, None
        continue
      self.done += 1
      raw = self._block[offset]
      if "error" in raw:
        if raw.get("detail") and raw["error"] in ("shard_unordered", "shard_truncated"):
          logging.warning("%s: %s (%s); the rest of the shard is skipped this visit",
                          self.spec.name, raw["error"], raw["detail"])
        return raw
      return {"image": raw["image"], "captions": formats.captions_of(raw), "label": -1,
              "scene": NO_SCENE}

  def _pinned(self) -> Dict:
    """What the order of records depends on besides the position."""
    names = "\n".join(str(p) for p in self.paths)
    return {"shards": len(self.paths),
            "shards_sha1": hashlib.sha1(names.encode()).hexdigest()[:16],
            "window": self.window}

  def get_state(self) -> Dict:
    """Shard visits finished ("visits") and records read in the current one ("done"), with the
    shard count, a hash of the shard names and the window, which `set_state` checks."""
    return {"visits": self.visits, "done": self.done, **self._pinned()}

  def set_state(self, state: Dict):
    """Raises ValueError when the shard list or the shuffle window differ from the saved run's
    (the resumed order could not be the same); states saved without them are taken as they are.
    """
    pinned = self._pinned()
    changed = [f"{k} {state[k]!r} -> {pinned[k]!r}" for k in pinned
               if k in state and state[k] != pinned[k]]
    if changed:
      raise ValueError(
          f"cannot resume dataset {self.spec.name!r} exactly: {', '.join(changed)} since the "
          f"checkpoint (shards at {self.spec.path!r}; window = data.shuffle_window). Restore the "
          "shards and settings the run started with, or start a new run in another workdir.")
    self.visits, self.done, self._records = int(state["visits"]), int(state["done"]), None


class IndexReader:
  """A random-access dataset as one process's stream: its strided share of a shuffled order."""

  def __init__(self, records: grain.MapDataset, process_index: int, process_count: int):
    self.records, self.position = records, 0
    self.process_index, self.process_count = process_index, process_count

  def next(self) -> Dict:
    """The next record of this process's share: index process_index + position * process_count
    of the shuffled order."""
    record = self.records[self.process_index + self.position * self.process_count]
    self.position += 1
    return record

  def get_state(self) -> Dict:
    """{"position": records this reader has returned}."""
    return {"position": self.position}

  def set_state(self, state: Dict):
    """Resumes at a `get_state` position."""
    self.position = int(state["position"])


class StreamIterator(grain.DatasetIterator):
  """Examples from several readers, each filling its slots of every batch (see mixture.py).

  A record that is unreadable, or that `make_example` rejects, is replaced by the same reader's
  next record (deterministic; the state still points at the exact record) and its reason rides
  along in the example's `records.BAD` field, to be counted by the consumer.
  """

  def __init__(self, readers: Sequence, slots: np.ndarray,
               make_example: Callable[[Dict, np.random.Generator], Dict], seed: int,
               process_index: int, max_failures: int = 1000,
               caption_weights: Optional[Sequence[float]] = None):
    super().__init__()
    self.readers, self.slots, self.make_example = list(readers), slots, make_example
    # Each reader's examples' caption-loss weight ("caption_weight"; 1 when not given).
    self.caption_weights = list(caption_weights or [1.0] * len(self.readers))
    self.seed, self.process_index = seed, process_index
    self.max_failures = max_failures
    self.slot = 0
    self.taken = [0] * len(self.readers)

  def __next__(self) -> Dict:
    source = int(self.slots[self.slot])
    reader = self.readers[source]
    bad, details = [], {}
    for _ in range(self.max_failures):
      raw = reader.next()
      self.taken[source] += 1
      rng = np.random.default_rng([self.seed, self.process_index, source, self.taken[source]])
      try:
        if "error" in raw:
          raise records.BadRecord(raw["error"])
        example = {**self.make_example(raw, rng),
                   "caption_weight": np.float32(self.caption_weights[source]),
                   records.BAD: ";".join(bad)}
        break
      except Exception as e:  # pylint: disable=broad-except  (nothing may stop training)
        bad.append(getattr(e, "reason", f"read_failed:{type(e).__name__}"))
        if raw.get("detail"):
          details.setdefault(bad[-1], raw["detail"])
    else:
      raise RuntimeError(f"{self.max_failures} bad records in a row from dataset {source}: "
                         + records.reason_counts(bad, details))
    self.slot = (self.slot + 1) % len(self.slots)
    return example

  def get_state(self) -> Dict:
    """The next batch slot, records taken per reader, the slot table and each reader's state."""
    return {"slot": self.slot, "taken": list(self.taken), "slots": self.slots.tolist(),
            "readers": [r.get_state() for r in self.readers]}

  def set_state(self, state: Dict):
    """Resumes at a `get_state` state. Raises ValueError when the slot table differs (other
    weights or batch size), or when a reader's shards or window changed."""
    if "slots" in state and list(state["slots"]) != self.slots.tolist():
      raise ValueError("cannot resume the mixture exactly: its per-batch slots (from the "
                       "datasets' weights and the batch size) differ from the checkpoint's")
    self.slot, self.taken = int(state["slot"]), [int(t) for t in state["taken"]]
    for reader, s in zip(self.readers, state["readers"]):
      reader.set_state(s)


class StreamDataset(grain.IterDataset):
  """A Grain IterDataset around `StreamIterator`, so Grain can batch and prefetch it."""

  def __init__(self, make_iterator: Callable[[], StreamIterator]):
    super().__init__()
    self._make_iterator = make_iterator

  def __iter__(self) -> StreamIterator:
    return self._make_iterator()

  def __str__(self) -> str:
    return "StreamDataset"
