"""Captioning evaluation: greedy captions of held-out images, scored against the dataset's
reference captions (CIDEr, BLEU-4) and, on coca_shapes, against the scene itself (attribute
score); plus a caption gallery picture.

On coca_shapes the same decoder also captions BLANK image tokens (zeros): the attribute score of
that caption is what a model that ignores the image gets, the baseline that shows whether the
trained model looks at the image at all.
"""
import math
from typing import Any, Dict, List, Optional

from etils import epath
import jax
import numpy as np

from coca_jax.inference import decode
from coca_jax.parallel import sharding
from coca_jax.data import records, shapes
from coca_jax.evals import caption_metrics, caption_scores, common, pictures

NUM_EXAMPLES_SHOWN = 8  # (generated, reference) pairs in the results
GALLERY_FILE = "caption_gallery.png"


def generation_config(config, tokenizer, strategy: Optional[str] = None, **overrides):
  """Caption generation settings from `config.evals`: the longest caption is the training text
  length (start and end tokens included) unless `max_caption_length` says otherwise; the model
  decides when to stop (no minimum length) unless `caption_min_length` is set; any other
  `decode.GenerationConfig` field (strategy, beams, sampling, repetition controls) comes from
  `config.evals.generation`, then from the arguments."""
  ev = config.evals
  configured = ev.get("generation", None) or {}
  configured = dict(configured.to_dict() if hasattr(configured, "to_dict") else configured)
  strategy = strategy or configured.pop("strategy", "greedy")
  configured.pop("strategy", None)
  settings = {"max_len": int(ev.get("max_caption_length", 0) or config.data.text_length),
              "min_len": int(ev.get("caption_min_length", 0)), **configured, **overrides}
  return decode.GenerationConfig.for_tokenizer(tokenizer, strategy=strategy, **settings)


class CaptionEvaluator:
  """Captions of the first `num_examples` examples of an eval dataset (all of them when 0).

  `run_final(params, workdir=None, writer=None, step=None)` returns `{prefix}/cider`,
  `{prefix}/bleu4` (when the dataset has captions), `{prefix}/attribute_score` and
  `{prefix}/blank_image_attribute_score`, `{prefix}/attribute_recall` (the share of each
  scene's attributes stated truly) and its blank-image twin (coca_shapes), `{prefix}/clip_s`,
  `{prefix}/ref_clip_s` (with references) and `{prefix}/log_likelihood` (means over the
  captions; config.evals.caption_scores, on by default), `{prefix}/num_examples` and
  `{prefix}/examples` ((generated, reference) pairs); it writes the gallery PNG into `workdir`
  and to TensorBoard through `writer` when they are given.
  """
  final_only = True

  def __init__(self, config, model, mesh, tokenizer, *, dataset=None,
               num_examples: Optional[int] = None, gallery: Optional[int] = None,
               prefix: str = "captions", generation: Optional[decode.GenerationConfig] = None):
    ev = config.evals
    self.model, self.mesh, self.tokenizer, self.prefix = model, mesh, tokenizer, prefix
    self.config, self.dataset = config, dataset
    self.requested = int(ev.num_caption_examples if num_examples is None else num_examples)
    self.gallery = int(ev.get("gallery", 0) if gallery is None else gallery)
    self.batch_size = int(ev.batch_size)
    self.generation = generation or generation_config(config, tokenizer)
    self._iter = None
    self._scorer = None
    self.captions: List[Dict[str, Any]] = []  # the last run's captions, one dict per example

  def _rng(self, batch: int):
    """Sampling's key for one batch (fixed, so a checkpoint's captions are reproducible)."""
    if self.generation.strategy != "sample":
      return None
    return jax.random.fold_in(jax.random.key(0), batch)

  def _iterator(self):
    if self._iter is None:
      probe = common.eval_iterator(self.config, self.tokenizer, common.batch_unit(self.mesh),
                                   self.dataset)
      total = probe.num_examples
      self.num_examples = min(self.requested, total) if self.requested > 0 else total
      self.global_batch = common.fit_batch(self.batch_size, self.mesh, self.num_examples)
      self._iter = common.eval_iterator(self.config, self.tokenizer, self.global_batch,
                                        self.dataset)
    return self._iter

  def run(self, params) -> Dict[str, Any]:
    """The results of `run_final` without the gallery picture."""
    return self.run_final(params)

  def run_final(self, params, workdir=None, writer=None, step=None) -> Dict[str, Any]:
    """The results listed in the class docstring; also keeps the captions, one dict per
    example, in `self.captions` and draws the gallery into `workdir` / `writer`."""
    it = self._iterator()
    n = self.num_examples
    batches = math.ceil(n / self.global_batch)
    progress = common.Progress(f"{self.prefix}: captioning", n)
    rows: Dict[int, str] = {}
    references: Dict[int, List[str]] = {}
    scenes: Dict[int, np.ndarray] = {}
    scores: Dict[str, Dict[int, float]] = {}
    for k, batch in enumerate(it):
      if k >= batches:
        break
      g = sharding.global_batch({key: batch[key] for key in ("images", "index", "mask")},
                                self.mesh)
      tokens = decode.generate(self.model, params, g["images"], self.generation,
                               rng=self._rng(k)).tokens
      host = common.gather({"tokens": tokens, "index": g["index"], "mask": g["mask"]},
                           self.mesh)
      texts = [self.tokenizer.decode(row) for row in host["tokens"]]
      wanted = [int(i) for i, valid in zip(host["index"], host["mask"]) if valid and i < n]
      keep = set(wanted)
      for index in wanted:  # each record read once: its references and scene
        record = it.source[index]
        references[index] = common.clean_captions(record["captions"])
        scenes[index] = np.asarray(record["scene"])
      batch_scores = self._caption_scores(
          params, g["images"], texts, [references.get(int(i), []) for i in host["index"]])
      for j, index in enumerate(host["index"]):
        if int(index) in keep:
          rows[int(index)] = texts[j]
          for name, values in batch_scores.items():
            scores.setdefault(name, {})[int(index)] = float(values[j])
      progress.update(len(wanted))
    results = self._score(params, it.source, rows, references, scenes, workdir, writer, step)
    for name, values in scores.items():
      results[f"{self.prefix}/{name}"] = float(np.mean(list(values.values())))
      for c in self.captions:
        c[name] = values.get(c["index"])
    return results

  def _caption_scores(self, params, images, texts, references):
    """CLIP-S, RefCLIP-S (when the records have captions) and log-likelihood of a batch's
    generated captions (caption_scores.py), or nothing when config.evals.caption_scores is
    off."""
    if not self.config.evals.get("caption_scores", True):
      return {}
    if self._scorer is None:
      self._scorer = caption_scores.CaptionScorer(self.model, self.mesh, self.tokenizer,
                                                  self.config.data.text_length)
    return self._scorer.score(params, images, texts, references)

  def _score(self, params, source, rows, references, scenes, workdir, writer,
             step) -> Dict[str, Any]:
    p = self.prefix
    self.captions = []
    for index in sorted(rows):
      scene = scenes[index]
      self.captions.append({"index": index, "generated": rows[index],
                            "references": references[index],
                            "scene": scene if scene[0] > 0 else None})
    results: Dict[str, Any] = {f"{p}/num_examples": len(self.captions)}
    with_refs = [c for c in self.captions if c["references"]]
    if with_refs:
      results.update(caption_metrics.caption_metrics(
          [c["references"] for c in with_refs], [c["generated"] for c in with_refs], p))
    scenes = [c for c in self.captions if c["scene"] is not None]
    if scenes:
      results[f"{p}/attribute_score"] = float(np.mean(
          [shapes.caption_attribute_score(c["generated"], c["scene"]) for c in scenes]))
      blank = self.blank_image_caption(params)
      results[f"{p}/blank_image_attribute_score"] = float(np.mean(
          [shapes.caption_attribute_score(blank, c["scene"]) for c in scenes]))
      results[f"{p}/attribute_recall"] = float(np.mean(
          [shapes.caption_attribute_recall(c["generated"], c["scene"]) for c in scenes]))
      results[f"{p}/blank_image_attribute_recall"] = float(np.mean(
          [shapes.caption_attribute_recall(blank, c["scene"]) for c in scenes]))
      results[f"{p}/blank_image_caption"] = blank
    results[f"{p}/examples"] = [
        (c["generated"], c["references"][0] if c["references"] else None)
        for c in self.captions[:NUM_EXAMPLES_SHOWN]]
    if self.gallery and (workdir is not None or writer is not None):
      self._write_gallery(source, workdir, writer, step)
    return results

  def blank_image_caption(self, params) -> str:
    """The caption of all-zero image tokens (the decoder's prior without an image)."""
    cfg = self.model.cfg
    size = cfg.vision.image_size
    shape = jax.eval_shape(
        lambda p, x: self.model.apply({"params": p}, x, method="encode_image")[1], params,
        jax.ShapeDtypeStruct((1, size, size, 3), np.float32)).shape
    rows = common.batch_unit(self.mesh) // jax.process_count()
    local = np.zeros((rows,) + tuple(shape[1:]), np.float32)
    tokens = decode.generate_from_image_tokens(
        self.model, params, sharding.global_batch(local, self.mesh), self.generation,
        rng=self._rng(-1)).tokens
    return self.tokenizer.decode(common.gather(tokens, self.mesh)[0])

  def _write_gallery(self, source, workdir, writer, step):
    shown = self.captions[:self.gallery]
    images = [records.open_image(source[c["index"]]["image"]) for c in shown]
    picture = pictures.caption_gallery(
        images, [c["generated"] for c in shown],
        [c["references"][0] if c["references"] else None for c in shown])
    if not common.main_process():
      return
    if workdir is not None:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      pictures.save_png(epath.Path(workdir) / GALLERY_FILE, picture)
    if writer is not None:
      writer.write_images(step or 0, {f"{self.prefix}/gallery": picture[None]})


class ShapesCaptionEvaluator(CaptionEvaluator):
  """The training job's caption check on the embedded dataset (`config.data.eval`):
  `config.evals.num_caption_examples` held-out images, `config.evals.gallery` in the picture."""

  def __init__(self, config, model, mesh, tokenizer):
    super().__init__(config, model, mesh, tokenizer)
