"""Evaluators: each is built once, from the config, and has `run(params) -> {name: value}`.

`build` makes those that `config.evals` asks for; `run_evaluators` runs them (the periodic ones
during training, all of them at the end) and merges their results.
"""
from typing import Any, Dict, List

import jax

from coca_jax import data


def build(config, model, mesh, tokenizer) -> List[Any]:
  from coca_jax.evals.validation import ValidationLossEvaluator  # pylint: disable=g-import-not-at-top
  from coca_jax.evals.zero_shot import ZeroShotEvaluator  # pylint: disable=g-import-not-at-top
  ev = config.evals
  eval_iter = data.build_eval_iterator(
      config.data, global_batch_size=ev.batch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), tokenizer=tokenizer)
  evaluators = []
  if ev.zeroshot:
    evaluators.append(ZeroShotEvaluator(
        model, mesh, eval_iter, tokenizer, data.class_names(config.data),
        data.zero_shot_templates(config.data), config.data.text_length))
  if ev.val_loss:
    evaluators.append(ValidationLossEvaluator(
        model, mesh, eval_iter, pad_id=model.cfg.text.pad_id,
        contrastive_weight=config.loss.contrastive_weight,
        caption_weight=config.loss.caption_weight))
  if ev.captions:
    from coca_jax.evals.captions import ShapesCaptionEvaluator  # pylint: disable=g-import-not-at-top
    evaluators.append(ShapesCaptionEvaluator(config, model, mesh, tokenizer))
  return evaluators


def run_evaluators(evaluators, params, final: bool, **kwargs) -> Dict[str, Any]:
  results: Dict[str, Any] = {}
  for evaluator in evaluators:
    if final or not getattr(evaluator, "final_only", False):
      if final and hasattr(evaluator, "run_final"):
        results.update(evaluator.run_final(params, **kwargs))
      else:
        results.update(evaluator.run(params))
  return results
