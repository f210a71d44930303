"""A folder of images per class as an evaluation dataset: every image once, in sorted
order, through the pipeline's EvalIterator (padding, mask, index). The folder itself, its
classes and their names: `coca_jax.data.folder`.
"""
from typing import Dict, Optional

import grain
import jax

from coca_jax.data import pipeline
from coca_jax.data.config import resolve
from coca_jax.data.folder import FolderSource


def source_eval_iterator(data_config, source, global_batch_size: int, tokenizer,
                         process_index: Optional[int] = None,
                         process_count: Optional[int] = None) -> pipeline.EvalIterator:
  """Every record of a random-access `source` once (this process's share), preprocessed as
  `data_config` says for evaluation."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  cfg = resolve(data_config)
  make = pipeline.ExampleMaker.from_config(cfg, tokenizer, train=False)
  read = grain.ReadOptions(num_threads=cfg["num_threads"], prefetch_buffer_size=cfg["prefetch"])
  return pipeline.EvalIterator(source, make, global_batch_size, process_index, process_count,
                               read)


def build_eval_iterator(data_config, spec: Dict, global_batch_size: int, tokenizer,
                        **processes) -> pipeline.EvalIterator:
  """The eval iterator over a folder spec ({"path", "split", "class_names"})."""
  source = FolderSource(spec["path"], spec.get("split", "all"),
                        class_names=spec.get("class_names", ""))
  return source_eval_iterator(data_config, source, global_batch_size, tokenizer, **processes)
