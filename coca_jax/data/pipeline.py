"""The train and eval iterators: process-local batches, deterministic and resumable.

Training over random-access datasets (TFDS ArrayRecord, including converted local files) is
index-based: global example j of the run is slot j % B of global batch j // B (B = global batch
size); each dataset fills fixed slots of every batch (mixture.py) and walks its own shuffled,
repeated order (reshuffled every epoch); example j's augmentation is seeded by (seed, j); process
p takes global examples p, p + P, p + 2P, ... So global batch k is the same set of examples for
any process count, and the iterator's whole state is k: a resume with another process count
restores the global position exactly. Grain does the shuffling and the threaded prefetch.

Training with any `stream=True` dataset reads shards in place (streams.py); its state is
per process and a resume with another process count is refused.

A record that fails at read time is replaced deterministically (training) or masked out
(evaluation) and counted; `stats()` reports the counts and the time spent waiting for input.
"""
import dataclasses
import json
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import grain
import numpy as np

from coca_jax.data import mixture, preprocess, records, streams
from coca_jax.data.config import resolve
from coca_jax.data.sources import Source, open_source
from coca_jax.data.spec import DatasetSpec, caption_weighted, parse_specs
from coca_jax.parallel.platforms import hide_accelerators_from_tensorflow

STATE_VERSION = 1
MAX_REPLACEMENTS = 100


@dataclasses.dataclass(frozen=True)
class ExampleMaker:
  """A record -> model inputs: decoded, cropped, normalised image; tokenized caption."""
  image_size: int
  text_length: int
  tokenizer: Any
  mean: np.ndarray
  std: np.ndarray
  crop_scale: Sequence[float] = (0.9, 1.0)
  crop_ratio: Sequence[float] = (3 / 4, 4 / 3)
  random_crop: bool = True
  max_caption_chars: int = 1000
  # Encoded picture -> its cropped uint8 pixels, kept when the crop is not random (see
  # `config.data.cache_in_memory`); None: decode every time.
  pixel_cache: Optional[Dict] = dataclasses.field(default=None, compare=False, repr=False)

  @classmethod
  def from_config(cls, cfg, tokenizer, train: bool) -> "ExampleMaker":
    """From a resolved `config.data` (`config.resolve`): image size, text length, `mean` and
    `std` when set (else the named normalization), crop ranges, caption length. The crop is
    random only when `train` and `crop` is "random_resized_crop"; a training maker with a
    fixed crop and `cache_in_memory` keeps the pixels it makes."""
    mean, std = preprocess.mean_std(
        cfg["normalization"] if cfg["mean"] is None else {"mean": cfg["mean"], "std": cfg["std"]})
    random_crop = train and cfg["crop"] == "random_resized_crop"
    return cls(cfg["image_size"], cfg["text_length"], tokenizer, mean, std,
               tuple(cfg["crop_scale"]), tuple(cfg["crop_ratio"]), random_crop,
               cfg["max_caption_chars"],
               {} if train and cfg["cache_in_memory"] and not random_crop else None)

  def __call__(self, record: Dict, rng: Optional[np.random.Generator]) -> Dict:
    """rng None: evaluation (centre crop, first caption)."""
    # Training takes a random caption, evaluation the first; a bad one gives way to the next.
    captions = record["captions"]
    order = rng.permutation(len(captions)) if rng is not None else range(len(captions))
    caption, error = None, records.BadRecord("caption_empty")
    if not len(captions) and rng is None:  # images without text (inference): an empty text
      caption = ""
    for i in order if caption is None else ():
      try:
        caption = records.clean_caption(captions[i], self.max_caption_chars)
        break
      except records.BadRecord as e:
        error = e
    if caption is None:
      raise error
    return {"images": preprocess.normalize(self._pixels(record["image"], rng), self.mean,
                                           self.std),
            "text": self.tokenizer.encode([caption], self.text_length)[0],
            "label": np.int32(record["label"]), "scene": np.asarray(record["scene"], np.int32)}

  def _pixels(self, encoded, rng: Optional[np.random.Generator]) -> np.ndarray:
    """uint8 (image_size, image_size, 3): the picture decoded and cropped."""
    key = encoded if self.pixel_cache is not None and isinstance(encoded, bytes) else None
    if key is not None and key in self.pixel_cache:
      return self.pixel_cache[key]
    # Training may decode large JPEGs at reduced scale (fast); evaluation decodes in full, so
    # that it matches open_clip's preprocessing exactly.
    image = records.open_image(encoded, min_size=self.image_size if rng is not None else None)
    pixels = preprocess.preprocess_image(
        image, self.image_size, rng if self.random_crop else None, scale=self.crop_scale,
        ratio=self.crop_ratio)
    if key is not None:
      self.pixel_cache[key] = pixels
    return pixels

  def blank(self) -> Dict:
    """A stand-in for a masked-out example: zero image, empty (but valid) text."""
    return {"images": np.zeros((self.image_size, self.image_size, 3), np.float32),
            "text": self.tokenizer.encode([""], self.text_length)[0], "label": np.int32(-1),
            "scene": streams.NO_SCENE}


class RecordCache:
  """A random-access source whose records, once read, are kept in memory (`__getitem__`); its
  other attributes are the source's. Records are not modified after reading, so sharing them
  is safe; concurrent first reads of one index at worst read it twice."""

  def __init__(self, source: Source):
    self.source, self._records = source, {}

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Dict:
    index = int(index)
    record = self._records.get(index)
    if record is None:
      record = self._records[index] = self.source[index]
    return record

  def __getattr__(self, name):  # only for names not set in __init__
    if name in ("source", "_records"):
      raise AttributeError(name)
    return getattr(self.source, name)


def _reason(error: Exception) -> str:
  return getattr(error, "reason", f"read_failed:{type(error).__name__}")


def _in_batches(read: grain.ReadOptions, batch: int) -> grain.ReadOptions:
  """Read options for a dataset of whole batches: each reader thread makes a whole batch (far
  less Python overhead than a thread hop per example), `prefetch` examples ahead."""
  return grain.ReadOptions(num_threads=read.num_threads,
                           prefetch_buffer_size=max(2, -(-read.prefetch_buffer_size // batch)))


def _grain_seed(*values) -> int:
  return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


def _shuffled(source: Source, seed: int, index: int) -> grain.MapDataset:
  """The source's records in a seeded order, reshuffled every epoch, repeated forever."""
  return grain.MapDataset.source(source).seed(_grain_seed(seed, index)).shuffle().repeat()


class DataIterator:
  """Process-local batches with a checkpointable state and input-wait timing.

  `get_state()` -> bytes (JSON) and `set_state(bytes | dict)`; `stats()` -> counts of batches,
  bad records and seconds spent waiting in `next()`. Use `checkpoint.IteratorSave/Restore` to
  keep the state inside an Orbax checkpoint.
  """

  def __init__(self, info: Dict):
    self.info, self.counts = info, records.BadRecordCounts()
    self.process_index = info["process_index"]
    self.process_count = info["process_count"]
    self.batches, self.input_wait_s = 0, 0.0
    self._it = None

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    start = time.perf_counter()
    batch = next(self._it)
    self.input_wait_s += time.perf_counter() - start
    self.batches += 1
    self.counts.add_joined(batch.pop(records.BAD))
    return batch

  def stats(self) -> Dict[str, Any]:
    """Batches taken, seconds `next()` waited for input, and bad records in those batches (total
    and "bad_records/<reason>")."""
    return {"batches": self.batches, "input_wait_s": self.input_wait_s,
            "bad_records": self.counts.total(), **{f"bad_records/{k}": v
                                                   for k, v in self.counts.as_dict().items()}}

  def get_state(self) -> bytes:
    """The position as JSON bytes, with the seed, batch size, process layout and dataset
    fingerprints that `set_state` checks."""
    return json.dumps({"version": STATE_VERSION, **self.info, **self._position()}).encode()

  def set_state(self, state):
    """Resumes at a `get_state` state (bytes, str or dict).

    Raises ValueError when the state is another run's (seed, global batch size, datasets or
    kind differ) or, for streamed data, another process layout's.
    """
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    for key in ("seed", "global_batch_size", "datasets", "kind"):
      if state.get(key) != self.info[key]:
        raise ValueError(f"data iterator state is for another run: {key} {state.get(key)!r} "
                         f"!= {self.info[key]!r}")
    self._restore(state)

  def start_prefetch(self):
    """Grain's checkpoint handler calls this after a restore; prefetch starts on `next()`."""

  def close(self):
    """Closes the underlying Grain iterator, when it has a `close` method."""
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()

  def _position(self) -> Dict:
    raise NotImplementedError

  def _restore(self, state: Dict):
    raise NotImplementedError


class IndexIterator(DataIterator):
  """Random-access training data: the state is the number of global batches consumed."""

  def __init__(self, examples: grain.MapDataset, info: Dict, read_options):
    super().__init__(info)
    self._examples, self._read_options = examples, read_options
    self._restart(0)

  def _restart(self, next_batch: int):
    self.next_batch = next_batch
    b = self.info["global_batch_size"] // self.process_count
    start = next_batch * self.info["global_batch_size"] + self.process_index
    local = self._examples[start::self.process_count].batch(b)
    self._it = iter(local.to_iter_dataset(_in_batches(self._read_options, b)))

  def __next__(self):
    batch = super().__next__()
    self.next_batch += 1
    return batch

  def _position(self) -> Dict:
    return {"next_batch": self.next_batch}

  def _restore(self, state: Dict):
    self.close()
    self._restart(int(state["next_batch"]))  # exact for any process count


class StreamingIterator(DataIterator):
  """Streamed training data: the state is this process's readers' positions."""

  def __init__(self, dataset: grain.IterDataset, info: Dict):
    super().__init__(info)
    self._it = iter(dataset)

  def _position(self) -> Dict:
    return {"stream": self._it.get_state()}

  def _restore(self, state: Dict):
    if (state["process_index"], state["process_count"]) != (self.process_index,
                                                            self.process_count):
      raise ValueError(
          "cannot resume streamed data with a different process layout: the state was saved by "
          f"process {state['process_index']} of {state['process_count']}, this is process "
          f"{self.process_index} of {self.process_count}. Shard-by-shard reading keeps one "
          "position per process; resume with the same process count, or convert the data to "
          "TFDS (stream=False), whose index-based order resumes exactly with any count.")
    self._it.set_state(state["stream"])


def _check_layout(global_batch_size: int, process_index: int, process_count: int):
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} "
                     "processes")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
  hide_accelerators_from_tensorflow()


def build_train_iterator(data_config, *, global_batch_size: int, seed: int, process_index: int,
                         process_count: int, tokenizer) -> DataIterator:
  """Endless process-local batches {"images": f32 (b, S, S, 3), "text": i32 (b, L)} and, when
  a dataset sets `caption_weight` (see `batch_fields`), "caption_weight": f32 (b,); b =
  global_batch_size / process_count, from `data_config.train` (one dataset or a mixture)."""
  _check_layout(global_batch_size, process_index, process_count)
  cfg = resolve(data_config)
  specs = parse_specs(cfg["train"])
  make = ExampleMaker.from_config(cfg, tokenizer, train=True)
  random_access = [None if s.stream else open_source(s, cfg["data_dir"]) for s in specs]
  if cfg["cache_in_memory"]:
    random_access = [s and RecordCache(s) for s in random_access]
  info = {"kind": "stream" if any(s.stream for s in specs) else "index", "seed": seed,
          "global_batch_size": global_batch_size, "process_index": process_index,
          "process_count": process_count,
          "datasets": [s.fingerprint() if s else f"{spec.name}:{spec.path}"
                       for s, spec in zip(random_access, specs)]}
  fields = batch_fields(data_config) + (records.BAD,)
  train_only = lambda example: {k: example[k] for k in fields}  # noqa: E731
  if info["kind"] == "index":
    examples = _index_examples(random_access, specs, seed, global_batch_size, make)
    read = grain.ReadOptions(num_threads=cfg["num_threads"], prefetch_buffer_size=cfg["prefetch"])
    return IndexIterator(examples.map(train_only), info, read)
  b = global_batch_size // process_count
  readers = [
      streams.ShardReader(spec, _grain_seed(seed, i), process_index, process_count,
                          cfg["shuffle_window"]) if src is None
      else streams.IndexReader(_shuffled(src, seed, i), process_index, process_count)
      for i, (spec, src) in enumerate(zip(specs, random_access))]
  slots = mixture.slot_table([s.weight for s in specs], b)
  dataset = streams.StreamDataset(lambda: streams.StreamIterator(
      readers, slots, make, seed, process_index,
      caption_weights=[s.caption_weight for s in specs])).map(train_only).batch(b)
  dataset = grain.experimental.ThreadPrefetchIterDataset(
      dataset, prefetch_buffer_size=max(1, cfg["prefetch"] // b))
  return StreamingIterator(dataset, info)


def batch_fields(data_config) -> tuple:
  """The fields of a training batch: ("images", "text"), and "caption_weight" when a dataset of
  `data_config.train` sets a caption weight other than 1."""
  weighted = caption_weighted(parse_specs(resolve(data_config)["train"]))
  return ("images", "text") + (("caption_weight",) if weighted else ())


def _index_examples(sources: List[Source], specs: List[DatasetSpec], seed: int, batch: int,
                    make: ExampleMaker) -> grain.MapDataset:
  """Global example j of the run, for every j (see the module docstring)."""
  table = mixture.slot_table([s.weight for s in specs], batch)
  ranks = mixture.slot_ranks(table)
  per_batch = np.bincount(table, minlength=len(sources))
  orders = [_shuffled(src, seed, i) for i, src in enumerate(sources)]

  def example(j: int) -> Dict:
    k, slot = divmod(j, batch)
    i = int(table[slot])
    rng = np.random.default_rng([seed, j])
    record = orders[i][k * int(per_batch[i]) + int(ranks[slot])]
    bad = []
    for _ in range(MAX_REPLACEMENTS):
      try:
        return {**make(record, rng), "caption_weight": np.float32(specs[i].caption_weight),
                records.BAD: ";".join(bad)}
      except Exception as e:  # pylint: disable=broad-except  (nothing may stop training)
        bad.append(_reason(e))
        record = sources[i][int(rng.integers(len(sources[i])))]  # deterministic stand-in
    raise RuntimeError(f"{MAX_REPLACEMENTS} bad records in a row in {specs[i].name}: "
                       + records.reason_counts(bad))

  return grain.MapDataset.range(sys.maxsize).map(example)


class EvalIterator:
  """Every example of a split exactly once, in order, then padding up to a whole global batch.

  Batches hold "images", "text", "label" (-1 when none), "scene" (coca_shapes), "index" (the
  example's position in the split) and "mask" (False for padding and for records that failed
  to read; those are counted in `counts`). Every process yields `num_batches` batches.
  Iterating again starts again from the beginning.
  """

  def __init__(self, source: Source, make: ExampleMaker, global_batch_size: int,
               process_index: int, process_count: int, read_options):
    self.source, self.counts = source, records.BadRecordCounts()
    self.class_names = source.class_names
    self.num_examples = len(source)
    self.num_batches = -(-self.num_examples // global_batch_size)
    total = self.num_batches * global_batch_size
    blank = make.blank()

    def example(j: int) -> Dict:
      bad = ""
      if j < self.num_examples:
        try:
          return {**make(source[j], None), "mask": True, "index": np.int64(j), records.BAD: ""}
        except Exception as e:  # pylint: disable=broad-except
          bad = _reason(e)
      return {**blank, "mask": False, "index": np.int64(j), records.BAD: bad}

    self._examples = grain.MapDataset.range(total)[process_index::process_count].map(example)
    self._read_options = read_options
    self._batch = global_batch_size // process_count

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self):
    self.counts = records.BadRecordCounts()
    batches = self._examples.batch(self._batch)
    for batch in batches.to_iter_dataset(_in_batches(self._read_options, self._batch)):
      self.counts.add_joined(batch.pop(records.BAD))
      yield batch


def build_eval_iterator(data_config, *, global_batch_size: int, process_index: int,
                        process_count: int, tokenizer, dataset=None) -> EvalIterator:
  """Evaluation batches over `dataset` (a spec; default `data_config.eval`)."""
  _check_layout(global_batch_size, process_index, process_count)
  cfg = resolve(data_config)
  spec = DatasetSpec.parse(dataset if dataset is not None else cfg["eval"])
  make = ExampleMaker.from_config(cfg, tokenizer, train=False)
  read = grain.ReadOptions(num_threads=cfg["num_threads"], prefetch_buffer_size=cfg["prefetch"])
  return EvalIterator(open_source(spec, cfg["data_dir"]), make, global_batch_size,
                      process_index, process_count, read)
