"""Batch inference over a whole dataset, sharded over the devices of every process:

  python -m coca_jax.inference.batch --config=configs/NAME.py --checkpoint=PATH \
      --dataset=NAME[:SPLIT] --outputs=image_embeddings,text_embeddings,captions --output=DIR

writes into DIR (process 0):
  image_embeddings.npy   float32 (N, embed_dim), row i = example i of the split (NaN rows: the
                         image could not be read)
  text_embeddings.npy    float32 (T, embed_dim), one row per line of texts.jsonl
  texts.jsonl            {"row", "text", "image"}: every caption of the split (image = its
                         example), or the lines of --texts
  captions.jsonl         {"index", "path" (image files), "caption", "references", "clip_s",
                         "log_likelihood", "ref_clip_s" (with references)}, in split order
  paths.txt              image files and folders: row i's file (the rows of every output)
  unreadable.txt         the images that could not be read (also counted in manifest.json)
  manifest.json          what was written, the checkpoint, counts and timings
Datasets as in eval.py ("" = config.data.eval; "folder:PATH" = a folder of images per class),
and "images:PATH": any pile of images, a folder, a glob or a text file listing paths.
Captions: --strategy=greedy|beam|sample with --num_beams, --top_k, --top_p, --temperature,
--repetition_penalty, --no_repeat_ngram_size.
Rows are written as batches finish, so the whole set never sits in memory.
"""
import json
import os
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from coca_jax.inference import flags as generation_flags  # noqa: E402

OUTPUTS = ("image_embeddings", "text_embeddings", "captions")

config_flags.DEFINE_config_file("config", None, "Config file (data fields, mesh); default: "
                                "the checkpoint's own.",
                                lock_config=False)
flags.DEFINE_string("checkpoint", None, "Workdir, checkpoint step, export or converted model.")
flags.DEFINE_string("dataset", "", "NAME[:SPLIT], folder:PATH[:SPLIT], images:PATH (a folder, "
                    "glob or list file of images), or '' (data.eval).")
flags.DEFINE_string("class_names", None, "Image folders' class names: imagenet, or a file "
                    "(one per line, or JSON {folder: name}); default: found from the folders.")
flags.DEFINE_list("outputs", ["image_embeddings"], f"Any of {OUTPUTS}.")
flags.DEFINE_string("texts", None, "Embed the lines of this file instead of the captions.")
flags.DEFINE_string("text_key", None, "Caption feature of the dataset.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: config.data.data_dir).")
flags.DEFINE_integer("batch_size", 256, "Global batch (rounded up to fit the mesh).")
flags.DEFINE_string("output", None, "Directory for the arrays and JSON lines.")
generation_flags.define(num_beams=4)
flags.DEFINE_integer("max_len", 0, "Longest caption in tokens (0: config.data.text_length).")
flags.DEFINE_integer("min_len", 0, "No end token before this many tokens.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["checkpoint", "output"])


def _writer(path, shape, main: bool):
  """A .npy file filled row by row (process 0 only; others get None)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  if not main:
    return None
  array = np.lib.format.open_memmap(str(path), mode="w+", dtype=np.float32, shape=shape)
  array[:] = np.nan
  return array


def infer(config, checkpoint_path: str, output_dir: str, dataset="",
          outputs=("image_embeddings",), texts_file: Optional[str] = None,
          generation=None, seed: int = 0, batch_size: int = 256) -> Dict:
  """Runs the chosen outputs; returns the manifest (also written as manifest.json).
  `generation`: a `decode.GenerationConfig`, or a dict ("strategy" and any of its fields) that
  the config completes (lengths, token ids)."""
  # pylint: disable=import-outside-toplevel
  import flax.linen as nn
  import jax
  import numpy as np
  from etils import epath
  from coca_jax.inference import decode
  from coca_jax.parallel import distributed
  from coca_jax.parallel import sharding
  from coca_jax.evals import caption_scores, common, saved_model, zero_shot
  from coca_jax.evals.captions import generation_config
  # pylint: enable=import-outside-toplevel
  unknown = set(outputs) - set(OUTPUTS)
  if unknown:
    raise ValueError(f"outputs {sorted(unknown)}: choose from {OUTPUTS}")
  distributed.initialize(config.distributed)
  saved = saved_model.load(config, checkpoint_path)
  config, mesh, rules, tokenizer = saved.config, saved.mesh, saved.rules, saved.tokenizer
  model, params = saved.model, saved.params
  main = common.main_process()
  out = epath.Path(output_dir)
  if main:
    out.mkdir(parents=True, exist_ok=True)
  manifest: Dict = {"checkpoint": str(checkpoint_path), "dataset": str(dataset), "files": {}}
  it = None
  if "image_embeddings" in outputs or "captions" in outputs or (
      "text_embeddings" in outputs and not texts_file):
    it = (common.eval_iterator(config, tokenizer, common.fit_batch(batch_size, mesh), dataset)
          if main else None)
    distributed.barrier("data_ready")
    if it is None:
      it = common.eval_iterator(config, tokenizer, common.fit_batch(batch_size, mesh),
                                dataset)
    manifest["examples"] = it.num_examples
  # Settings given as overrides are completed from the config only now that the checkpoint
  # has given it the model's text length.
  if generation is None or isinstance(generation, dict):
    overrides = dict(generation or {})
    gen = generation_config(config, tokenizer, overrides.pop("strategy", "greedy"), **overrides)
  else:
    gen = generation
  rng = jax.random.key(seed)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    if "image_embeddings" in outputs or "captions" in outputs:
      start = time.perf_counter()
      embeds = captions_file = None
      encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image")[0])
      if "captions" in outputs and main:
        captions_file = (out / "captions.jsonl").open("w")
      scorer = caption_scores.CaptionScorer(model, mesh, tokenizer, config.data.text_length)
      progress = common.Progress("infer: images", it.num_examples)
      paths = getattr(it.source, "files", None)  # image folders and piles of images
      seen = np.zeros(it.num_examples, bool)
      for k, batch in enumerate(it):
        g = sharding.global_batch({key: batch[key] for key in ("images", "index", "mask")},
                                  mesh)
        found = {"index": g["index"], "mask": g["mask"]}
        if "image_embeddings" in outputs:
          found["embed"] = encode(params, g["images"])
        if "captions" in outputs:
          found["tokens"] = decode.generate(model, params, g["images"], gen,
                                            rng=jax.random.fold_in(rng, k)).tokens
        host = common.gather(found, mesh)
        order = np.argsort(host["index"])
        valid = host["mask"][order]
        index = host["index"][order][valid]
        seen[index] = True
        if "embed" in host:
          if embeds is None:
            embeds = _writer(out / "image_embeddings.npy",
                             (it.num_examples, host["embed"].shape[-1]), main)
          if main:
            embeds[index] = host["embed"][order][valid]
        if "tokens" in host:
          texts = [tokenizer.decode(row) for row in host["tokens"]]
          references = [common.clean_captions(it.source[int(i)]["captions"]) if m else []
                        for i, m in zip(host["index"], host["mask"])]
          scores = scorer.score(params, g["images"], texts, references)
        if captions_file is not None:
          for j in order[valid]:
            captions_file.write(json.dumps({
                "index": int(host["index"][j]),
                **({"path": str(paths[int(host["index"][j])])} if paths else {}),
                "caption": texts[j],
                "references": references[j],
                **{name: float(values[j]) for name, values in scores.items()}}) + "\n")
        progress.update(int(valid.sum()))
      if embeds is not None:
        embeds.flush()
        manifest["files"]["image_embeddings.npy"] = list(embeds.shape)
      if paths and main:  # row i of every output is image i
        (out / "paths.txt").write_text("".join(f"{p}\n" for p in paths))
        manifest["files"]["paths.txt"] = len(paths)
      unreadable = np.flatnonzero(~seen)
      manifest["unreadable"] = int(len(unreadable))
      manifest["bad_records"] = it.counts.as_dict()
      if len(unreadable) and main:
        (out / "unreadable.txt").write_text("".join(
            f"{paths[i] if paths else i}\n" for i in unreadable))
        manifest["files"]["unreadable.txt"] = int(len(unreadable))
        print(f"infer: {len(unreadable)} image(s) could not be read, listed in "
              f"{out / 'unreadable.txt'} ({manifest['bad_records']})", flush=True)
      if captions_file is not None:
        captions_file.close()
        manifest["files"]["captions.jsonl"] = it.num_examples
      manifest["image_seconds"] = time.perf_counter() - start

    if "text_embeddings" in outputs:
      start = time.perf_counter()
      texts, owners = _texts(texts_file, it, common)
      progress = common.Progress("infer: texts", len(texts), "texts")
      chunk, array = 65536, None
      for first in range(0, len(texts), chunk):
        rows = tokenizer.encode(texts[first:first + chunk], config.data.text_length)
        e = zero_shot.encode_texts(model, params, rows, batch_size, mesh, progress)
        if array is None:
          array = _writer(out / "text_embeddings.npy", (len(texts), e.shape[-1]), main)
        if main:
          array[first:first + len(e)] = e
      if main:
        with (out / "texts.jsonl").open("w") as f:
          for row, (text, owner) in enumerate(zip(texts, owners)):
            f.write(json.dumps({"row": row, "text": text, "image": owner}) + "\n")
      if array is not None:
        array.flush()
        manifest["files"]["text_embeddings.npy"] = list(array.shape)
      manifest["files"]["texts.jsonl"] = len(texts)
      manifest["text_seconds"] = time.perf_counter() - start

  if main:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {', '.join(manifest['files'])} to {out}", flush=True)
  return manifest


def _texts(texts_file, it, common) -> "tuple[List[str], List[Optional[int]]]":
  """Lines of a file, or every caption of the split with its example index."""
  if texts_file:
    from coca_jax.data import formats  # pylint: disable=import-outside-toplevel
    with formats.open_text(texts_file) as f:  # UTF-8 / UTF-16 with a BOM, CRLF line ends
      lines = [line.rstrip("\r\n") for line in f if line.strip()]
    return lines, [None] * len(lines)
  texts, owners = [], []
  for index in range(it.num_examples):
    try:
      captions = common.clean_captions(it.source[index]["captions"])
    except Exception:  # pylint: disable=broad-except  (an unreadable record has none)
      captions = []
    texts += captions
    owners += [index] * len(captions)
  return texts, owners


def main(argv):
  """`python -m coca_jax.inference.batch`: the flags (see the module docstring) to `infer`.

  Without --config, the config is the checkpoint's own (a workdir's, or an export's saved
  settings); --data_dir, --max_len and --class_names override its fields, --text_key the
  dataset's caption feature. Logs warnings only, unless --verbosity is given.
  """
  del argv
  from coca_jax.parallel.platforms import start_command  # pylint: disable=import-outside-toplevel
  start_command()
  f = flags.FLAGS
  from coca_jax.train import config as train_config  # pylint: disable=import-outside-toplevel
  # Without --config: the workdir's own config, or the settings saved with an export.
  config = f.config if f.config is not None else train_config.from_checkpoint(f.checkpoint)
  with config.unlocked():
    if f.data_dir is not None:
      config.data.data_dir = f.data_dir
    if f.max_len:
      config.evals.max_caption_length = f.max_len
    if f.class_names is not None:
      config.evals.class_names = f.class_names
  dataset = f.dataset
  if f.text_key:
    from coca_jax.evals import common  # pylint: disable=import-outside-toplevel
    dataset = {**common.dataset_spec(config, dataset), "text_key": f.text_key}
  generation = dict(generation_flags.values(f), min_len=f.min_len)
  infer(config, f.checkpoint, f.output, dataset, tuple(f.outputs), f.texts, generation,
        f.seed, f.batch_size)


if __name__ == "__main__":
  app.run(main)
