"""The input pipeline: datasets, preprocessing and resumable batch iterators.

`config.data` fields (defaults in `config.py`; unknown fields are refused):
  train           dataset spec, or a mixture: a dict of name -> spec (or a list of specs),
                  mixed by their `weight` with exact per-batch proportions (spec fields:
                  sources.py). A mixture written as a dict stays overridable from the command
                  line (--config.data.train.NAME.weight=2).
  eval            dataset spec for evaluation (default: coca_shapes validation)
  data_dir        TFDS data dir; None: TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  tokenizer       spec for `coca_jax.tokenizers.load` ("embedded", "clip_bpe", a .model path)
  image_size      square side of the model's images
  text_length     tokens per text (start + caption + end, padded)
  normalization   "openai_clip" | "imagenet" | "half" | "unit"; or set `mean` and `std`
                  (3 numbers each), which take precedence
  crop            training crop: "random_resized_crop" or "center" (eval always resizes the
                  shorter side, bicubic, then crops the centre)
  crop_scale, crop_ratio   random resized crop ranges (default (0.9, 1.0), (3/4, 4/3))
  max_caption_chars        longer captions are cut on a word boundary
  num_threads, prefetch    Grain reader threads (in this process) and examples read ahead
  shuffle_window  records shuffled together inside a streamed shard

Use:
  tok = coca_jax.tokenizers.load(config.data.tokenizer)
  it = data.build_train_iterator(config.data, global_batch_size=B, seed=0,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(), tokenizer=tok)
  batch = next(it)  # {"images": f32 (B/P, S, S, 3), "text": i32 (B/P, L)}
  it.stats()        # {"batches", "input_wait_s", "bad_records", "bad_records/<reason>"}

Input wait: `it.input_wait_s` is the total time `next(it)` blocked; divide its growth by the
step time to get the fraction of time spent waiting for input.

Checkpoints: the iterator's state is small JSON (`it.get_state()` -> bytes,
`it.set_state(bytes)`). Keep it in the Orbax checkpoint next to the train state:
  from coca_jax.checkpoints.data_iterator import IteratorSave, IteratorRestore
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                             data=IteratorSave(it)))
  manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                data=IteratorRestore(it)))
Random-access data resumes exactly with any process count; streamed data (stream=True) only
with the same one (otherwise set_state raises and says why).

Evaluation: `build_eval_iterator(...)` yields every example once (padded last batch, `mask`),
with "label", "scene" (coca_shapes) and "index"; `class_names(config.data)` and
`zero_shot_templates(config.data)` give the zero-shot classifier's prompts;
`caption_attribute_score(caption, scene)` scores a generated caption on coca_shapes.

Multi-host: call `prepare(config.data)` on one process (then a barrier) before building
iterators when several processes share a data_dir, so only one of them generates or converts.

Modules:
  config.py       `config.data` defaults, and checking a user's fields against them
  convert.py      `python -m coca_jax.data.convert`: people's own files into a TFDS dataset
  embedded.py     `coca_shapes`, the embedded default dataset (a TFDS builder, no download)
  formats.py      people's own files (csv, tsv, jsonl, webdataset, tfrecord) as raw records
  labels.py       images with class labels, for classifiers (probes, fine-tuning)
  local.py        the TFDS builder over people's own files (what convert.py runs)
  mixture.py      exact per-batch proportions: which batch slots each dataset fills
  pipeline.py     the train and eval iterators (deterministic, resumable)
  preprocess.py   image resize, crops and normalisation, as open_clip's torchvision transforms
  provenance.py   what a prepared dataset was prepared from, so a changed source is refused
  records.py      decoding images, cleaning captions; bad records rejected and counted
  shapes.py       coca_shapes' scenes: pictures, captions, scoring generated captions
  spec.py         dataset specs: fields, prompt template sets, mixtures as lists of specs
  sources.py      random access to a split of a dataset as records
  folder.py       a folder of images per class as records (captions from templates)
  streams.py      web-scale training reads: shards read in place, shard by shard
"""
from typing import Dict, Optional, Sequence

from coca_jax.data.config import default_config, resolve
from coca_jax.data.pipeline import (DataIterator, EvalIterator, batch_fields,
                                    build_eval_iterator, build_train_iterator)
from coca_jax.data.shapes import caption_attribute_counts, caption_attribute_score
from coca_jax.data.sources import Source, open_source
from coca_jax.data.spec import DatasetSpec, parse_specs

__all__ = ["build_train_iterator", "batch_fields", "build_eval_iterator", "class_names",
           "zero_shot_templates", "caption_attribute_score", "caption_attribute_counts", "prepare", "default_config",
           "eval_dataset", "DataIterator", "EvalIterator", "DatasetSpec"]


def _eval_spec(data_config, dataset) -> DatasetSpec:
  return DatasetSpec.parse(dataset if dataset is not None else resolve(data_config)["eval"])


def class_names(data_config, dataset=None) -> Sequence[str]:
  """Class names of the eval dataset (or `dataset`), for zero-shot classification."""
  spec = _eval_spec(data_config, dataset)
  if spec.name.startswith("coca_shapes") and spec.format == "tfds" and not spec.path:
    from coca_jax.data import shapes  # pylint: disable=import-outside-toplevel
    return shapes.CLASS_NAMES
  source = open_source(spec, resolve(data_config)["data_dir"])
  names = source.prompt_names() if spec.format == "folder" else source.class_names
  if not names:
    raise ValueError(f"{spec.name} has no class label feature (set label_key)")
  return names


def zero_shot_templates(data_config, dataset=None) -> Sequence[str]:
  """Prompt templates ("...{}...") for the eval dataset's class names."""
  from coca_jax.data.spec import TEMPLATES  # pylint: disable=import-outside-toplevel
  spec = _eval_spec(data_config, dataset)
  if spec.templates is not None:
    return spec.template_list()
  return TEMPLATES["coca_shapes" if spec.name.startswith("coca_shapes") else "clip"]


def prepare(data_config) -> Dict[str, Dict]:
  """Generates or converts every dataset of the config that needs it; returns, for converted
  files, the bad records dropped by split (also logged and kept in the dataset's metadata)."""
  from coca_jax.data import local  # pylint: disable=import-outside-toplevel
  cfg = resolve(data_config)
  reports = {}
  for spec in parse_specs(cfg["train"]) + [DatasetSpec.parse(cfg["eval"])]:
    if spec.stream or spec.format == "folder":  # read in place
      continue
    source = Source(spec, cfg["data_dir"], reprepare=cfg["reprepare"])
    if spec.format != "tfds":
      reports[source.builder.info.full_name] = local.bad_record_report(source.builder)
  return reports


def eval_dataset(data_config, split: Optional[str] = None) -> DatasetSpec:
  """The eval spec with another split (e.g. "test")."""
  spec = _eval_spec(data_config, None)
  return DatasetSpec.parse({**{k: getattr(spec, k) for k in spec.__dataclass_fields__},
                            **({"split": split} if split else {})})
