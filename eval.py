"""Evaluates a saved CoCa model:

  python eval.py --checkpoint=PATH [--config=configs/NAME.py] \
      --evals=zeroshot,retrieval,captioning [--dataset=NAME[:SPLIT]] [--output=DIR]

Without --config, a workdir or checkpoint step is evaluated with its workdir's config.json, an
export with the input settings and tokenizer saved with it (older exports and converted
open_clip models: OpenAI's normalisation and CLIP's tokenizer, said when used).

PATH: a training workdir (its latest checkpoint), one checkpoint step (WORKDIR/checkpoints/N),
an export, or a converted open_clip model. Evaluations (comma separated):
  zeroshot              CLIP-style zero-shot classification, top-1 / top-5
  zeroshot_generative   zero-shot by the captioning decoder's likelihood of each class prompt
  retrieval             image->text and text->image recall@1/5/10 and mAP
  captioning            greedy captions: CIDEr, BLEU-4 (and the attribute score on coca_shapes)
  val_loss              contrastive and caption losses
Datasets: "" is config.data.eval; "NAME[:SPLIT]" a prepared TFDS dataset (imagenet2012,
imagenet_v2, coco_captions, ...); "folder:PATH[:SPLIT]" a folder of images per class.
ImageNet: --dataset=imagenet2012 --manual_dir=DIR (holding ILSVRC2012_img_val.tar) prepares it
the first time. Nothing is downloaded. On a pod run the same command on every host.
Captions: --strategy=greedy|beam|sample with --num_beams, --top_k, --top_p, --temperature,
--repetition_penalty, --no_repeat_ngram_size (config.evals.generation).
Other config fields: --config.evals.FIELD=VALUE (see coca_jax/evals/__init__.py).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from coca_jax.inference import flags as generation_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (data fields, mesh, evals); "
                                "default: the checkpoint's own (workdir config.json, or the "
                                "settings saved with an export).",
                                lock_config=False)
flags.DEFINE_string("checkpoint", None, "Workdir, checkpoint step, export or converted model.")
flags.DEFINE_list("evals", ["zeroshot", "retrieval", "captioning"], "Evaluations to run.")
flags.DEFINE_string("dataset", None, "Dataset of every chosen evaluation (default: data.eval).")
flags.DEFINE_string("zeroshot_dataset", None, "Dataset for zero-shot (default: --dataset).")
flags.DEFINE_string("retrieval_dataset", None, "Dataset for retrieval (default: --dataset).")
flags.DEFINE_string("captioning_dataset", None, "Dataset for captioning (default: --dataset).")
flags.DEFINE_string("text_key", None, "Caption feature of the retrieval/captioning datasets.")
flags.DEFINE_string("label_key", None, "Label feature of the zero-shot dataset.")
flags.DEFINE_string("class_names", None, "Image folders' class names: imagenet, or a file "
                    "(one per line, or JSON {folder: name}); default: found from the folders.")
flags.DEFINE_string("templates", None, "Zero-shot templates: imagenet, clip, photo, coca_shapes.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: config.data.data_dir).")
flags.DEFINE_string("manual_dir", None, "Prepare the TFDS datasets from this manual dir first.")
flags.DEFINE_integer("num_captions", 0, "Images to caption (0: the whole split).")
flags.DEFINE_integer("batch_size", None, "Global eval batch (default: config.evals.batch_size).")
generation_flags.define(num_beams=6)
flags.DEFINE_string("output", None, "Directory for results.json, captions and pictures.")
flags.mark_flags_as_required(["checkpoint"])

EVALS = {"zeroshot": "zeroshot", "zeroshot_generative": "generative_zeroshot",
         "generative_zeroshot": "generative_zeroshot", "retrieval": "retrieval",
         "captioning": "captions", "captions": "captions", "val_loss": "val_loss"}


def configure(config, f):
  """The config's evals section as the flags ask."""
  from coca_jax.evals import DEFAULTS, option  # noqa: E402  pylint: disable=import-outside-toplevel
  unknown = [e for e in f.evals if e not in EVALS]
  if unknown:
    raise app.UsageError(f"--evals: unknown {unknown}; choose from {sorted(EVALS)}")
  with config.unlocked():
    ev = config.evals
    for name, default in DEFAULTS.items():  # an older config may lack newer fields
      if name not in ev:
        ev[name] = default
    for field in set(EVALS.values()):
      ev[field] = False
    for name in f.evals:
      ev[EVALS[name]] = True
    datasets = option(config, "datasets")
    for key, flag in (("zeroshot", f.zeroshot_dataset), ("retrieval", f.retrieval_dataset),
                      ("captions", f.captioning_dataset)):
      chosen = flag if flag is not None else f.dataset
      if chosen is not None:
        datasets[key] = chosen
    ev.datasets = datasets
    ev.num_caption_examples = f.num_captions
    for field, value in (("text_key", f.text_key), ("label_key", f.label_key),
                         ("class_names", f.class_names),
                         ("zeroshot_templates", f.templates), ("batch_size", f.batch_size)):
      if value is not None:
        ev[field] = value
    if f.data_dir is not None:
      config.data.data_dir = f.data_dir
    generation = dict(ev.get("generation", None) or {})
    for name in generation_flags.NAMES:
      if f[name].present or name not in generation:
        generation[name] = f[name].value
    if generation["strategy"] != "beam":
      generation.pop("num_beams")
    ev.generation = generation
  return config


def main(argv):
  del argv
  # pylint: disable=import-outside-toplevel
  from coca_jax.parallel.platforms import start_command  # noqa: E402
  start_command()
  from coca_jax.evals import evaluate  # noqa: E402
  # pylint: enable=import-outside-toplevel
  f = flags.FLAGS
  # pylint: disable-next=import-outside-toplevel
  from coca_jax.train import config as train_config  # noqa: E402
  # Without --config: the workdir's own config, or the settings saved with an export.
  config = f.config if f.config is not None else train_config.from_checkpoint(f.checkpoint)
  config = configure(config, f)
  evaluate.evaluate(config, f.checkpoint, f.output, manual_dir=f.manual_dir)


if __name__ == "__main__":
  app.run(main)
