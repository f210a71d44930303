"""Mixtures with exact per-batch proportions: which slot of a batch each dataset fills.

A batch of `size` slots is split by the weights (largest remainders, every dataset with a
positive weight gets at least one slot) and the slots are dealt in an interleaved order, so any
contiguous or strided share of the batch (one process's part) holds close to the same mix.
"""
from typing import Sequence

import numpy as np


def slot_counts(weights: Sequence[float], size: int) -> np.ndarray:
  """How many of `size` slots each dataset fills: proportional to `weights`, summing to `size`.

  Args:
    weights: (N,) non-negative floats, one per dataset, with a positive sum.
    size: slots in a batch.

  Returns:
    int64 (N,): the floor of each exact share, raised to 1 for a positive weight; the slots
    left over go to the largest remainders.

  Raises:
    ValueError: weights that are not 1-D, empty, negative or summing to 0, or more datasets
      with a positive weight than slots.
  """
  weights = np.asarray(weights, np.float64)
  if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
    raise ValueError(f"mixture weights must be non-negative with a positive sum: {weights}")
  if (weights > 0).sum() > size:
    raise ValueError(f"{(weights > 0).sum()} datasets cannot share a batch of {size}")
  exact = weights / weights.sum() * size
  counts = np.floor(exact).astype(np.int64)
  counts[(weights > 0) & (counts == 0)] = 1
  while counts.sum() > size:  # the minimum of one slot overshot: take from the largest
    counts[np.argmax(counts - exact)] -= 1
  order = np.argsort(-(exact - counts), kind="stable")
  for i in order[:size - counts.sum()]:
    counts[i] += 1
  return counts


def slot_table(weights: Sequence[float], size: int) -> np.ndarray:
  """int64 (size,): the dataset of each slot, interleaved (slot i goes to the dataset furthest
  behind its share at i).

  `weights`: (N,) floats as for `slot_counts`, whose ValueError this raises.
  """
  counts = slot_counts(weights, size)
  table = np.empty(size, np.int64)
  filled = np.zeros(len(counts))
  for slot in range(size):
    lag = (slot + 1) * counts / size - filled
    lag[filled >= counts] = -np.inf
    table[slot] = int(np.argmax(lag))
    filled[table[slot]] += 1
  return table


def slot_ranks(table: np.ndarray) -> np.ndarray:
  """int64 (size,): for each slot, how many earlier slots belong to the same dataset.

  `table`: integer (size,) dataset of each slot, as `slot_table` gives it.
  """
  ranks = np.zeros(len(table), np.int64)
  seen = {}
  for slot, source in enumerate(table):
    ranks[slot] = seen.get(int(source), 0)
    seen[int(source)] = ranks[slot] + 1
  return ranks
