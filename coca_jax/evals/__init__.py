"""Evaluators: each is built once, from the config, and has `run(params) -> {name: value}`;
some also `run_final(params, workdir=, writer=, step=)` (pictures, files) and `final_only`.

`build` makes those that `config.evals` asks for; `run_evaluators` runs them (the periodic ones
during training, all of them at the end) and merges their results. `eval.py` runs the same
evaluators on a saved checkpoint.

`config.evals` fields (train_config.py; fields missing from an older config take the defaults
below):
  zeroshot, val_loss, captions   the training job's evaluators (on config.data.eval unless
                                 `datasets` names another dataset)
  retrieval                      recall@1/5/10 and mAP, image->text and text->image
  generative_zeroshot            zero-shot by the captioning decoder's likelihood of each prompt
  batch_size                     global eval batch (rounded up to fit the mesh and processes)
  num_caption_examples           images captioned by `captions` (0: the whole split)
  max_caption_length, caption_min_length   generation limits (0: the data's text length / none)
  gallery                        images in the caption gallery picture
  datasets.{zeroshot,retrieval,captions}   "" (config.data.eval), "NAME[:SPLIT]" (TFDS) or
                                 "folder:PATH[:SPLIT]" (a folder of images per class)
  text_key, label_key            caption / label feature of those datasets when not the default
  class_names                    image folders' class names: "" (automatic), "imagenet", or a
                                 names file (see coca_jax/evals/folder.py)
  zeroshot_templates             "" (ImageNet: CLIP's 80; coca_shapes: its own; else CLIP's
                                 short list), or "imagenet", "clip", "photo", "coca_shapes"
  text_batch_size                prompts / captions embedded per step
  retrieval_captions_per_image   0: all of them (COCO's usual protocol takes 5)
  retrieval_pictures             text queries in the retrieval picture
  generative_class_chunk         classes scored together by generative zero-shot
  caption_scores                 CLIP-S, RefCLIP-S and log-likelihood of generated captions
  at_start                       train.py: also evaluate the starting params (a fresh run's
                                 first state) and report each figure before and after
  generation                     caption decoding: any decode.GenerationConfig field
                                 (strategy, num_beams, top_k, top_p, temperature,
                                 repetition_penalty, no_repeat_ngram_size, ...)

Modules:
  common.py           batch sizes that fit the mesh, gathering to the host, dataset specs,
                      progress lines
  zero_shot.py        zero-shot classification (CLIP's prompt ensembling, or generative)
  imagenet.py         ImageNet-1k class names, WordNet ids and CLIP's 80 templates
  retrieval.py        image<->text retrieval: recall@1/5/10 and mAP
  captions.py         captioning of held-out images, scored by the metrics below
  caption_metrics.py  BLEU-1..4 and CIDEr-D as the COCO caption toolkit computes them
  caption_scores.py   CLIP-S, RefCLIP-S, caption log-likelihood, agreement with human ratings
  validation.py       contrastive and caption losses on the eval split
  pictures.py         caption gallery and retrieval example pictures (PNG / TensorBoard)
  folder.py           eval iterators over a folder of images per class (coca_jax/data/folder.py)
  image_files.py      any pile of images (folder, glob, list file) as an inference dataset
  manual.py           TFDS datasets prepared from the user's own files (ImageNet tars)
  saved_model.py      a saved model ready to run: config, mesh, tokenizer, sharded params
  evaluate.py         evaluating a saved checkpoint (`eval.py`)
  data/               ImageNet class names, WordNet ids and templates, one per line
"""
from typing import Any, Dict, List

DEFAULTS = dict(zeroshot=False, val_loss=False, captions=False, retrieval=False,
                generative_zeroshot=False, batch_size=256, num_caption_examples=256,
                max_caption_length=0, caption_min_length=0, gallery=8,
                datasets=dict(zeroshot="", retrieval="", captions=""), text_key="",
                label_key="", class_names="", zeroshot_templates="", text_batch_size=256,
                retrieval_captions_per_image=0, retrieval_pictures=4,
                generative_class_chunk=8, generation={}, caption_scores=True,
                at_start=False)


def option(config, name: str):
  """config.evals.<name>, or its default when an older config lacks it."""
  ev = config.evals
  value = ev.get(name, None) if hasattr(ev, "get") else None
  if value is None:
    return DEFAULTS[name]
  if name == "datasets":
    given = value.to_dict() if hasattr(value, "to_dict") else dict(value)
    return {**DEFAULTS["datasets"], **given}
  return value


def build(config, model, mesh, tokenizer) -> List[Any]:
  """The evaluators `config.evals` turns on, in the order zero-shot, generative zero-shot,
  validation loss, retrieval, captions. Zero-shot, validation loss and retrieval share one eval
  iterator per dataset spec, of `evals.batch_size` rounded up by `common.fit_batch`.

  Raises:
    ValueError: the zero-shot dataset has no class names, or their count differs from its
      labels', or `evals.zeroshot_templates` names no known template list
      (`zero_shot_prompts`); or an eval dataset cannot be read.
  """
  # pylint: disable=g-import-not-at-top
  from coca_jax.evals import common
  from coca_jax.evals.validation import ValidationLossEvaluator
  from coca_jax.evals.zero_shot import ZeroShotEvaluator
  # pylint: enable=g-import-not-at-top
  datasets = option(config, "datasets")
  batch = common.fit_batch(option(config, "batch_size"), mesh)
  text_length = config.data.text_length
  iterators: Dict[Any, Any] = {}

  def iterator(spec):
    key = repr(sorted(spec.items()))
    if key not in iterators:
      iterators[key] = common.eval_iterator(config, tokenizer, batch, spec)
    return iterators[key]

  evaluators = []
  generative = option(config, "generative_zeroshot")
  if option(config, "zeroshot") or generative:
    spec = common.dataset_spec(config, datasets["zeroshot"])
    if option(config, "label_key"):
      spec["label_key"] = option(config, "label_key")
    try:
      it = iterator(spec)
    except ValueError as e:  # no caption feature: class prompts stand in (they are unused)
      if "no text feature" not in str(e):
        raise
      spec = {**spec, "templates": ["{}"]}
      it = iterator(spec)
    names, templates = zero_shot_prompts(config, spec, it.source)
    kwargs = dict(text_batch_size=option(config, "text_batch_size"))
    if option(config, "zeroshot"):
      evaluators.append(ZeroShotEvaluator(model, mesh, it, tokenizer, names, templates,
                                          text_length, **kwargs))
    if generative:
      evaluators.append(ZeroShotEvaluator(
          model, mesh, it, tokenizer, names, templates, text_length,
          prefix="zeroshot_generative", generative=True,
          class_chunk=option(config, "generative_class_chunk"), **kwargs))
  if option(config, "val_loss"):
    evaluators.append(ValidationLossEvaluator(
        model, mesh, iterator(common.dataset_spec(config, "")), pad_id=model.cfg.text.pad_id,
        contrastive_weight=config.loss.contrastive_weight,
        caption_weight=config.loss.caption_weight))
  if option(config, "retrieval"):
    from coca_jax.evals.retrieval import RetrievalEvaluator  # pylint: disable=g-import-not-at-top
    spec = caption_spec(config, datasets["retrieval"])
    evaluators.append(RetrievalEvaluator(
        model, mesh, iterator(spec), tokenizer, text_length,
        captions_per_image=option(config, "retrieval_captions_per_image"),
        text_batch_size=option(config, "text_batch_size"),
        num_pictured=option(config, "retrieval_pictures")))
  if option(config, "captions"):
    # pylint: disable=g-import-not-at-top
    from coca_jax.evals.captions import CaptionEvaluator, ShapesCaptionEvaluator
    if datasets["captions"] or option(config, "text_key"):
      evaluators.append(CaptionEvaluator(config, model, mesh, tokenizer,
                                         dataset=caption_spec(config, datasets["captions"])))
    else:
      evaluators.append(ShapesCaptionEvaluator(config, model, mesh, tokenizer))
  return evaluators


def caption_spec(config, dataset) -> Dict:
  """The dataset spec (`common.dataset_spec`) of a captioned dataset, with
  `config.evals.text_key` as its caption feature when that is set."""
  from coca_jax.evals import common  # pylint: disable=g-import-not-at-top
  spec = common.dataset_spec(config, dataset)
  if option(config, "text_key"):
    spec["text_key"] = option(config, "text_key")
  return spec


def zero_shot_prompts(config, spec, source):
  """(class names, templates) for a dataset: CLIP's curated names and 80 templates on
  ImageNet-1k label sets, the embedded dataset's own, or the label names otherwise."""
  # pylint: disable=g-import-not-at-top
  from coca_jax.data import shapes
  from coca_jax.data.spec import TEMPLATES
  from coca_jax.evals import imagenet
  # pylint: enable=g-import-not-at-top
  labels = tuple(source.class_names or ())
  name = spec.get("name", "")
  if spec.get("format") == "folder":
    names = source.prompt_names()
    templates = imagenet.templates() if source.imagenet else TEMPLATES["clip"]
  elif imagenet.is_imagenet(name, labels):
    names, templates = imagenet.class_names(), imagenet.templates()
  elif name.startswith("coca_shapes"):
    names, templates = shapes.CLASS_NAMES, shapes.ZERO_SHOT_TEMPLATES
  else:
    names, templates = tuple(n.replace("_", " ") for n in labels), TEMPLATES["clip"]
  if not names:
    raise ValueError(f"zero-shot: dataset {spec} has no class names (set evals.label_key)")
  if labels and len(labels) != len(names):
    raise ValueError(f"zero-shot: {len(names)} class names for {len(labels)} labels")
  choice = option(config, "zeroshot_templates")
  if isinstance(choice, str) and choice:
    known = {"imagenet": imagenet.templates(), **TEMPLATES}
    if choice not in known:
      raise ValueError(f"config.evals.zeroshot_templates={choice!r}: one of {sorted(known)}, "
                       "or a list of '{}' templates")
    templates = known[choice]
  elif choice:
    templates = tuple(choice)
  return tuple(names), tuple(templates)


def run_evaluators(evaluators, params, final: bool, **kwargs) -> Dict[str, Any]:
  """Runs the evaluators on `params` and merges their {name: value} results (a later
  evaluator's name overrides an earlier one's).

  final=False (periodic, during training): `run(params)` of those that are not `final_only`.
  final=True: every evaluator, through `run_final(params, **kwargs)` where it has one (kwargs:
  workdir, writer, step, for pictures and files), else `run(params)`.
  """
  results: Dict[str, Any] = {}
  for evaluator in evaluators:
    if final or not getattr(evaluator, "final_only", False):
      if final and hasattr(evaluator, "run_final"):
        results.update(evaluator.run_final(params, **kwargs))
      else:
        results.update(evaluator.run(params))
  return results
