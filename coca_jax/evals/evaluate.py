"""Evaluating a saved model: `evaluate(config, checkpoint_path, output_dir)`.

checkpoint (a training workdir, one checkpoint step, an export or a converted open_clip model)
-> params sharded over the mesh -> the evaluators `config.evals` asks for (the same ones
training runs) -> a results table, results.json, generated captions (captions.jsonl) and
pictures in `output_dir`. Every process runs this same function; process 0 prints and writes.
"""
import dataclasses
import json
import time
from typing import Any, Dict, Optional

from absl import logging
from clu import metric_writers
from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from coca_jax import checkpoint, distributed, sharding, tokenizers, train_config
from coca_jax.evals import build, common
from coca_jax.model import create_model

RESULTS_FILE = "results.json"
CAPTIONS_FILE = "captions.jsonl"


_print, _barrier = distributed.print0, distributed.barrier


def logical_rules(config):
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in config.get("logical_rules", sharding.DEFAULT_RULES))


def with_checkpoint_model(config, model_config):
  """The config with the checkpoint's model in place of its own (a saved model is evaluated as
  what it was trained as; a fine-tune config's model may be "init_from"), and data sizes of 0
  taken from that model."""
  config = ml_collections.ConfigDict(config.to_dict())
  del config["model"]
  config.model = dataclasses.asdict(model_config)
  return train_config.sizes_from_model(config)


def load_model(config, path, mesh, rules, loaded=None):
  """(model, params sharded over the mesh) from any saved form; the model is built from the
  config saved with the params (it is what they were trained as). `loaded`: the
  (params, model config) `checkpoint.load_params(path)` gave, if already read."""
  params, model_config = loaded or checkpoint.load_params(path)
  if "head" in params and "decoder" not in params:
    raise ValueError(f"{path} holds an image classifier (a probe or a classification "
                     "fine-tune: encoder and head), not a CoCa model: its top-1 / top-5 are in "
                     "its final_metrics.json, and train.py with the same config and workdir "
                     "evaluates it again")
  model = create_model(model_config)
  cfg = model.cfg
  if config.data.image_size != cfg.vision.image_size:
    raise ValueError(f"config.data.image_size {config.data.image_size} differs from the "
                     f"checkpoint's model ({cfg.vision.image_size})")
  if config.data.text_length > cfg.text.context_length:
    raise ValueError(f"config.data.text_length {config.data.text_length} exceeds the "
                     f"checkpoint's text.context_length {cfg.text.context_length}")
  size = cfg.vision.image_size
  example = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, config.data.text_length), jnp.int32))
  boxed = jax.eval_shape(lambda k: model.init(k, *example)["params"], jax.random.key(0))
  shardings = sharding.logical_shardings(boxed, mesh, rules)
  expected = _shapes(nn.unbox(boxed))
  got = _shapes(params)
  if expected != got:
    differ = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
    raise ValueError(f"{path}: its params do not match its own model config; e.g. "
                     + ", ".join(f"{k}: {got.get(k)} (expected {expected.get(k)})"
                                 for k in differ[:5]))
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  return model, jax.device_put(params, shardings)


def _shapes(tree) -> Dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in flat}


def _check_tokenizer(tokenizer, model):
  t = model.cfg.text
  if tokenizer.vocab_size > t.vocab_size or tokenizer.pad_id != t.pad_id:
    raise ValueError(f"config.data.tokenizer (vocabulary {tokenizer.vocab_size}, pad "
                     f"{tokenizer.pad_id}) does not fit the checkpoint's model (vocabulary "
                     f"{t.vocab_size}, pad {t.pad_id})")


def load(config, checkpoint_path):
  """(config with the checkpoint's model, mesh, logical rules, tokenizer, model, params sharded
  over the mesh): what evaluation and inference start from."""
  loaded = checkpoint.load_params(checkpoint_path)
  config = with_checkpoint_model(config, loaded[1])
  mesh = sharding.config_mesh(config)
  rules = logical_rules(config)
  tokenizer = tokenizers.load(config.data.tokenizer)
  model, params = load_model(config, checkpoint_path, mesh, rules, loaded)
  _check_tokenizer(tokenizer, model)
  return config, mesh, rules, tokenizer, model, params


def evaluate(config, checkpoint_path, output_dir: Optional[str] = None,
             manual_dir: Optional[str] = None) -> Dict[str, Any]:
  """Runs the evaluators of `config.evals` on a saved model; returns the merged results.
  `manual_dir`: TFDS datasets that need the user's files (ImageNet) are prepared from it."""
  distributed.initialize(config.distributed)
  if manual_dir and common.main_process():
    from coca_jax.evals import manual  # pylint: disable=import-outside-toplevel
    manual.prepare_all(config, manual_dir)
  _barrier("datasets_prepared")
  t0 = time.perf_counter()
  config, mesh, rules, tokenizer, model, params = load(config, checkpoint_path)
  _print(f"loaded {checkpoint_path} in {time.perf_counter() - t0:.1f}s; mesh "
         f"{dict(mesh.shape)} over {mesh.devices.size} devices, {jax.process_count()} "
         "process(es)")
  # Process 0 first: it generates the embedded dataset if it is missing.
  evaluators = build(config, model, mesh, tokenizer) if common.main_process() else None
  _barrier("evaluators_built")
  if evaluators is None:
    evaluators = build(config, model, mesh, tokenizer)
  if not evaluators:
    raise ValueError("no evaluation chosen (config.evals: zeroshot, retrieval, captions, ...)")
  output = epath.Path(output_dir) if output_dir else None
  if output is not None and common.main_process():
    output.mkdir(parents=True, exist_ok=True)
  writer = (metric_writers.create_default_writer(str(output), just_logging=not
                                                 common.main_process())
            if output is not None else None)
  results: Dict[str, Any] = {}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for evaluator in evaluators:
      name = getattr(evaluator, "prefix", type(evaluator).__name__)
      _print(f"--- {name} ({type(evaluator).__name__})")
      start = time.perf_counter()
      if hasattr(evaluator, "run_final"):
        out = evaluator.run_final(params, workdir=output, writer=writer, step=0)
      else:
        out = evaluator.run(params)
      _print(f"{name}: done in {time.perf_counter() - start:.1f}s")
      results.update(out)
  if writer is not None:
    writer.write_scalars(0, common.scalars(results))
    writer.flush()
  _print(format_table(results))
  if output is not None and common.main_process():
    (output / RESULTS_FILE).write_text(json.dumps(
        {"checkpoint": str(checkpoint_path), "results": results}, indent=2, default=_json))
    captions = [c for e in evaluators for c in getattr(e, "captions", [])]
    if captions:
      with (output / CAPTIONS_FILE).open("w") as f:
        for c in captions:
          f.write(json.dumps({"index": c["index"], "caption": c["generated"],
                              "references": c["references"]}) + "\n")
    _print(f"results written to {output / RESULTS_FILE}")
  logging.info("results: %s", results)
  return results


def _json(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def format_table(results: Dict[str, Any]) -> str:
  """Numbers as a two-column table; captions (lists) below it."""
  numbers = common.scalars(results)
  width = max((len(k) for k in numbers), default=10) + 2
  lines = [f"{'metric':<{width}}value", "-" * (width + 12)]
  for key, value in numbers.items():
    whole = np.isfinite(value) and value == int(value) and abs(value) >= 1
    shown = f"{value:.0f}" if whole else f"{value:.4f}"
    lines.append(f"{key:<{width}}{shown}")
  for key, value in results.items():
    if isinstance(value, str):
      lines.append(f"{key}: {value}")
    elif isinstance(value, (list, tuple)):
      lines.append(f"{key}:")
      for item in value:
        lines.append("  " + (" | ".join(str(x) for x in item)
                             if isinstance(item, (list, tuple)) else str(item)))
  return "\n".join(lines)
