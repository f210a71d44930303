"""Images with class labels, for classifiers (probes, fine-tuning): the same index-based,
resumable train iterator and exactly-once eval iterator as pretraining, yielding
{"images", "label"} (eval batches also "mask").

`label` chooses the class:
  "label"    the dataset's class label feature (`label_key` of the spec, default "label")
  "colour", "shape", "size", "cell"   coca_shapes only: an attribute of the main object, read
             from the scene code (cell: its place in the 3x3 grid, col + 3 * row)
"""
import dataclasses
from typing import Dict, Optional, Sequence

import grain
import numpy as np

from coca_jax.data import pipeline, records, shapes
from coca_jax.data.config import resolve
from coca_jax.data.sources import open_source
from coca_jax.data.spec import DatasetSpec

SCENE_LABELS = {  # name -> (class count, label from the 12-integer scene code)
    "colour": (len(shapes.COLOURS), lambda s: s[..., 1]),
    "shape": (len(shapes.SHAPES), lambda s: s[..., 2]),
    "size": (len(shapes.SIZES), lambda s: s[..., 3]),
    "cell": (9, lambda s: s[..., 4] + 3 * s[..., 5]),
}
LABELS = ("label",) + tuple(SCENE_LABELS)


def _spec(spec) -> DatasetSpec:
  """The spec read for its labels only: its caption becomes the class index (no text feature
  is needed, as ImageNet has none)."""
  spec = DatasetSpec.parse(spec)
  if spec.stream or spec.format not in ("tfds", "folder"):
    raise ValueError(f"{spec.name}: classification reads a TFDS dataset with random access "
                     "(convert files with coca_jax.data.convert first)")
  return dataclasses.replace(spec, templates=spec.templates or ("{}",))


def class_names(data_config, spec, label: str) -> Sequence[str]:
  """Names of the classes of `label` (see the module docstring); name i is class i's.

  "label" gives the dataset's class names (a "folder" dataset's prompt names); a coca_shapes
  scene label gives placeholders "<label> <i>", e.g. "colour 0".

  Raises:
    ValueError: `label` not in LABELS, a scene label on a dataset other than coca_shapes, a
      dataset without a class label feature, or one read in place (streamed, or files not
      converted) rather than with random access.
  """
  if label == "label":
    source = open_source(_spec(spec), resolve(data_config)["data_dir"])
    names = source.prompt_names() if source.spec.format == "folder" else source.class_names
    if not names:
      raise ValueError(f"{DatasetSpec.parse(spec).name} has no class label feature")
    return names
  _check_scene_label(spec, label)
  return tuple(f"{label} {i}" for i in range(SCENE_LABELS[label][0]))


def _check_scene_label(spec, label: str):
  if label not in LABELS:
    raise ValueError(f"config.classify.label: {label!r} is not one of {LABELS}")
  if label != "label" and not DatasetSpec.parse(spec).name.startswith("coca_shapes"):
    raise ValueError(f"config.classify.label: {label!r} exists only for coca_shapes")


def relabel(example: Dict, label: str) -> Dict:
  """{"images", "label"} (+ "mask", "index", bad-record marks) with the chosen label; an
  example or a batch. A blank (masked-out) example's label is -1."""
  out = {k: v for k, v in example.items()
         if k in ("images", "label", "mask", "index", records.BAD)}
  if label != "label":
    scene = np.asarray(example["scene"])
    out["label"] = np.where(scene[..., 0] >= 0, SCENE_LABELS[label][1](scene),
                            -1).astype(np.int32)
  return out


def build_train_iterator(data_config, label: str, *, global_batch_size: int, seed: int,
                         process_index: int, process_count: int,
                         tokenizer) -> pipeline.DataIterator:
  """Endless process-local batches {"images": f32 (b, S, S, 3), "label": i32 (b,)} from
  `data_config.train` (one dataset)."""
  # pylint: disable=protected-access  (the pretraining pipeline's pieces, reused)
  pipeline._check_layout(global_batch_size, process_index, process_count)
  cfg = resolve(data_config)
  spec = _spec(cfg["train"])
  _check_scene_label(spec, label)
  make = pipeline.ExampleMaker.from_config(cfg, tokenizer, train=True)
  source = open_source(spec, cfg["data_dir"])
  info = {"kind": "index", "seed": seed, "global_batch_size": global_batch_size,
          "process_index": process_index, "process_count": process_count,
          "datasets": [source.fingerprint()]}
  examples = pipeline._index_examples([source], [spec], seed, global_batch_size, make)
  read = grain.ReadOptions(num_threads=cfg["num_threads"], prefetch_buffer_size=cfg["prefetch"])
  return pipeline.IndexIterator(examples.map(lambda e: relabel(e, label)), info, read)


def build_eval_iterator(data_config, label: str, *, global_batch_size: int,
                        process_index: int, process_count: int, tokenizer,
                        dataset: Optional[Dict] = None):
  """Every example of `dataset` (default `data_config.eval`) once: batches of {"images",
  "label", "mask"}."""
  cfg = resolve(data_config)
  spec = _spec(dataset if dataset is not None else cfg["eval"])
  _check_scene_label(spec, label)
  it = pipeline.build_eval_iterator(data_config, global_batch_size=global_batch_size,
                                    process_index=process_index, process_count=process_count,
                                    tokenizer=tokenizer, dataset=spec)
  return _Relabelled(it, label)


class _Relabelled:
  def __init__(self, it, label: str):
    self._it, self._label = it, label
    self.num_examples, self.num_batches = it.num_examples, it.num_batches

  def __len__(self):
    return len(self._it)

  def __iter__(self):
    for batch in self._it:
      yield relabel(batch, self._label)
