"""Evaluating a saved model: `evaluate(config, checkpoint_path, output_dir)`.

checkpoint (a training workdir, one checkpoint step, an export or a converted open_clip model)
-> params sharded over the mesh -> the evaluators `config.evals` asks for (the same ones
training runs) -> a results table, results.json, generated captions (captions.jsonl) and
pictures in `output_dir`. Every process runs this same function; process 0 prints and writes.
"""
import json
import time
from typing import Any, Dict, Optional

from absl import logging
from clu import metric_writers
from etils import epath
import flax.linen as nn
import jax
import numpy as np

from coca_jax.parallel import distributed
from coca_jax.evals import build, common, saved_model

RESULTS_FILE = "results.json"
CAPTIONS_FILE = "captions.jsonl"


_print, _barrier = distributed.print0, distributed.barrier


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
  saved = saved_model.load(config, checkpoint_path)
  config, mesh, rules, tokenizer = saved.config, saved.mesh, saved.rules, saved.tokenizer
  model, params = saved.model, saved.params
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
