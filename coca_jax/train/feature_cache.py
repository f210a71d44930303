"""A linear probe's features, computed once: the frozen encoder runs over the train split a
single time and the head trains on the stored features.

With a frozen encoder and deterministic preprocessing (centre crop) an image's features never
change, so each epoch of a plain probe recomputes the same numbers; here every step costs the
head alone. The cache goes into the workdir (`feature_cache/`) with a key naming what made it
(the encoder's checkpoint, the data config, the feature): a resumed run reads it instead of
running the encoder again, and a run with another key computes its own.

Every process computes its part of each batch and keeps the whole gathered cache, so that all
processes draw the same global batches; each takes its own rows of them.
"""
import json
from typing import Dict, Optional, Tuple

from etils import epath
import numpy as np

from coca_jax.parallel import sharding
from coca_jax.evals import common

DIRNAME = "feature_cache"


def compute(features_fn, params, batches, mesh, rules) -> Tuple[np.ndarray, np.ndarray]:
  """(features float32 (N, D), labels int32 (N,)) of every real example of `batches` (an eval
  iterator: {"images", "label", "mask", "index"}), in the split's order whatever the number of
  processes (each holds every process_count-th example). `features_fn(params, images)`."""
  features, labels, indices = [], [], []
  for local in batches:
    batch = sharding.global_batch(
        {k: local[k] for k in ("images", "label", "mask", "index")}, mesh, rules)
    host = common.gather({"features": features_fn(params, batch["images"]),
                          **{k: batch[k] for k in ("label", "mask", "index")}}, mesh)
    keep = host["mask"] & (host["label"] >= 0)
    features.append(host["features"].astype(np.float32)[keep])
    labels.append(host["label"].astype(np.int32)[keep])
    indices.append(host["index"][keep])
  if not features or not sum(len(x) for x in labels):
    raise ValueError("feature cache: the train split gave no labelled example")
  order = np.argsort(np.concatenate(indices), kind="stable")
  return np.concatenate(features)[order], np.concatenate(labels)[order]


def load(workdir, key: Dict) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """The cached features (N, F) float32 and labels (N,) int32 made with `key` (a JSON-able
  dict of what decides them), or None when there is none, it was made with another key or it
  is unreadable."""
  d = epath.Path(workdir) / DIRNAME
  try:
    if json.loads((d / "key.json").read_text()) != key:
      return None
    with (d / "features.npy").open("rb") as f:
      features = np.load(f)
    with (d / "labels.npy").open("rb") as f:
      labels = np.load(f)
  except (FileNotFoundError, ValueError, OSError):
    return None
  return (features, labels) if len(features) == len(labels) else None


def save(workdir, key: Dict, features: np.ndarray, labels: np.ndarray):
  """Writes features (N, F) float32 and labels (N,) int32 under WORKDIR/feature_cache with
  `key`; the key last, so that a cache cut short by a kill is never read."""
  d = epath.Path(workdir) / DIRNAME
  d.mkdir(parents=True, exist_ok=True)
  (d / "key.json").unlink(missing_ok=True)
  with (d / "features.npy").open("wb") as f:
    np.save(f, features)
  with (d / "labels.npy").open("wb") as f:
    np.save(f, labels)
  (d / "key.json").write_text(json.dumps(key, sort_keys=True))


class CachedBatches:
  """Endless process-local batches {"features", "label"} from a cache: epoch e visits every
  example once, in the order of a permutation seeded by (seed, e). The state is the number of
  global batches drawn, so a resumed run draws exactly the batches it would have drawn.

  Checkpointed like the data iterators (`get_state` / `set_state`); the cache itself is
  attached after the encoder's params are known (`attach`)."""

  KIND = "feature_cache"

  def __init__(self, global_batch_size: int, seed: int, process_index: int,
               process_count: int):
    if global_batch_size % process_count:
      raise ValueError(f"global batch {global_batch_size} does not split over "
                       f"{process_count} processes")
    self.global_batch_size, self.seed = global_batch_size, seed
    self.process_index, self.process_count = process_index, process_count
    self.next_batch = 0
    self.features = self.labels = None

  def attach(self, features: np.ndarray, labels: np.ndarray):
    """Sets the cache to draw from: features (N, F) float32 and labels (N,) int32."""
    self.features, self.labels = features, labels

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self.features is None:
      raise RuntimeError("CachedBatches: no cache attached")
    n, b = len(self.labels), self.global_batch_size
    positions = np.arange(self.next_batch * b, (self.next_batch + 1) * b, dtype=np.int64)
    epochs, within = positions // n, positions % n
    index = np.empty_like(positions)
    for epoch in np.unique(epochs):
      order = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
      index[epochs == epoch] = order[within[epochs == epoch]]
    local = b // self.process_count
    index = index[self.process_index * local:(self.process_index + 1) * local]
    self.next_batch += 1
    return {"features": self.features[index], "label": self.labels[index]}

  def get_state(self) -> bytes:
    """The position (the next batch's number) with what it is valid for, as JSON bytes."""
    return json.dumps({"kind": self.KIND, "seed": self.seed,
                       "global_batch_size": self.global_batch_size,
                       "next_batch": self.next_batch}).encode()

  def set_state(self, state):
    """Moves to a saved position; ValueError when it was saved for another seed, batch
    size or kind of iterator."""
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    expected = {"kind": self.KIND, "seed": self.seed,
                "global_batch_size": self.global_batch_size}
    for key, value in expected.items():
      if state.get(key) != value:
        raise ValueError(f"data state is for another run: {key} {state.get(key)!r} != "
                         f"{value!r}")
    self.next_batch = int(state["next_batch"])

  def start_prefetch(self):
    """Called by the checkpoint handler after a restore; nothing to start."""

  def close(self):
    """Nothing to release."""
