"""The training fields every config shares, with their defaults. Config files start from
`base_config()` and set `model`, `data` and what differs."""
import json
from typing import Any, Dict

from etils import epath
import ml_collections
from ml_collections import config_dict

from coca_jax.parallel import sharding
from coca_jax.data.config import DEFAULTS as DATA_DEFAULTS
from coca_jax.model import create_model


def base_config() -> ml_collections.ConfigDict:
  """Every field a training run reads, with its default: the micro-scale CoCa recipe that
  configs/*.py start from and override."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Every data field, so that any of them can be overridden from the command line.
  # (`train` and `eval`, dataset specs, are each config's own.)
  c.data = {k: v for k, v in DATA_DEFAULTS.items()
            if v is not None and k not in ("train", "eval")}
  c.data.data_dir = config_dict.placeholder(str)
  c.data.mean = config_dict.placeholder(tuple)
  c.data.std = config_dict.placeholder(tuple)
  c.num_train_steps = 1000
  c.global_batch_size = 64
  # Micro-batches per step; the contrastive loss still spans the whole global batch.
  c.grad_accum_steps = 1
  # distill_weight: pulls the image and text embeddings toward those of the init_from params
  # (losses.embedding_distillation), e.g. to keep zero-shot through a caption fine-tune.
  # dataset_caption_weights_from: the fraction of num_train_steps from which the datasets'
  # own caption weights (a spec's `caption_weight`) apply; before it every example weighs 1,
  # e.g. class-name prompts train the captioner early on, then only real captions do.
  c.loss = dict(contrastive_weight=1.0, caption_weight=2.0, distill_weight=0.0,
                dataset_caption_weights_from=0.0)
  c.optimizer = dict(name="adamw", learning_rate=1e-3, warmup_fraction=0.02, warmup_steps=0,
                     decay="cosine", end_learning_rate=0.0, b1=0.9, b2=0.98, eps=1e-6,
                     weight_decay=0.1, grad_clip_norm=1.0)
  # Mesh axis sizes; -1 takes the devices left over. `slice` spans TPU slices (DCN).
  c.mesh = dict(slice=1, data=-1, fsdp=1, tensor=1)
  c.logical_rules = [list(rule) for rule in sharding.DEFAULT_RULES]
  # new_run: a workdir's checkpoints are set aside (moved, not deleted) and a new run starts;
  # otherwise a run resumes from them or is refused (coca_jax/checkpoints/resume_rules.py).
  c.checkpoint = dict(every_steps=500, max_to_keep=3, async_save=True, new_run=False)
  c.log_every_steps = 50
  c.eval_every_steps = 500  # 0: only at the end
  # Evaluators (field meanings: coca_jax/evals/__init__.py). eval.py runs the same ones.
  c.evals = dict(zeroshot=True, val_loss=True, captions=True, batch_size=256,
                 num_caption_examples=256, max_caption_length=0, gallery=8,
                 retrieval=False, generative_zeroshot=False, caption_min_length=0,
                 datasets=dict(zeroshot="", retrieval="", captions=""), text_key="",
                 label_key="", zeroshot_templates="", text_batch_size=256,
                 retrieval_captions_per_image=0, retrieval_pictures=4,
                 generative_class_chunk=8, at_start=False)
  # Params-only initialisation (a checkpoint, an export or a converted open_clip model).
  c.init_from = ""
  # "pretrain" (CoCa's losses), or "probe" / "classify" (coca_jax/train/classify.py, `classify`).
  c.task = "pretrain"
  # Param path prefixes kept fixed, outside the optimized state, and named groups:
  # "contrastive_only" (the params only the contrastive loss uses), "embedding_path" (all the
  # embeddings read: only the multimodal decoder trains).
  c.freeze = ()
  c.nonfinite = "error"  # "error": stop naming the step; "skip": drop that update and go on
  c.distributed = dict(enabled="auto", coordinator_address="",
                       num_processes=config_dict.placeholder(int),
                       process_id=config_dict.placeholder(int),
                       initialization_timeout_s=300, heartbeat_timeout_s=100)
  return c


def resolve(config):
  """The config a run uses: model "init_from" replaced by the checkpoint's model config, data
  sizes of 0 by the model's."""
  return sizes_from_model(model_from_init(config))


def _source_model_config(path) -> Dict[str, Any]:
  """The model config saved with an export, a workdir or a checkpoint step (no params read)."""
  path = epath.Path(path)
  if (path / "model_config.json").exists():
    return json.loads((path / "model_config.json").read_text())
  workdir = path if (path / "checkpoints").exists() else path.parent.parent
  if not (workdir / "config.json").exists():
    raise FileNotFoundError(f"config.init_from={path}: no model_config.json or config.json "
                            "(not an export, a workdir or a checkpoint step)")
  return json.loads((workdir / "config.json").read_text())["model"]


def from_checkpoint(path) -> ml_collections.ConfigDict:
  """The config to evaluate or run inference on a checkpoint given without a config file.

  A training workdir, or one of its checkpoint steps: the workdir's config.json, as trained.
  A params directory (an export or a converted open_clip model): the base config with its model
  config, its tokenizer and the input fields saved with it (data_config.json); what is missing
  falls back to OpenAI's normalisation constants and CLIP's tokenizer, with a printed note.
  Raises FileNotFoundError for a path that is none of these.
  """
  from coca_jax.checkpoints import params_dir  # pylint: disable=import-outside-toplevel
  path = epath.Path(path)
  if (path / params_dir.MODEL_CONFIG).exists():
    config = base_config()
    config.model = json.loads((path / params_dir.MODEL_CONFIG).read_text())
    data = params_dir.load_data_config(str(path)) or {}
    notes = []
    if (path / params_dir.TOKENIZER).exists():
      config.data.tokenizer = str(path)
    else:
      config.data.tokenizer = "clip_bpe"
      notes.append("no tokenizer saved with it: CLIP's BPE")
    if not data:
      notes.append("no input settings saved with it: OpenAI's normalisation, the model's "
                   "image size and text length")
    for key in ("normalization", "image_size", "text_length"):
      if key in data:
        config.data[key] = data[key]
    if data.get("mean") is not None:
      config.data.mean, config.data.std = tuple(data["mean"]), tuple(data["std"])
    if "image_size" not in data:
      config.data.image_size = 0
    if "text_length" not in data:
      config.data.text_length = 0
    config.data.train = dict(name="coca_shapes", split="train")
    config.data.eval = dict(name="coca_shapes", split="validation")
    if notes:
      print(f"{path}: " + "; ".join(notes) + " (pass --config to choose)", flush=True)
    return sizes_from_model(config)
  workdir = path if (path / "checkpoints").exists() else path.parent.parent
  if (path / "state").exists() and (workdir / "config.json").exists():
    pass
  elif not (workdir / "config.json").exists():
    raise FileNotFoundError(f"{path} is neither a training workdir (config.json and "
                            "checkpoints/), a checkpoint step, nor a params directory "
                            "(model_config.json): pass --config")
  return ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))


def model_from_init(config):
  """config.model "init_from": the model config of the checkpoint config.init_from names."""
  if not isinstance(config.get("model"), str):
    return config
  if config.model != "init_from" or not config.init_from:
    raise ValueError(f"config.model: {config.model!r}: give a model config, or 'init_from' "
                     "together with config.init_from")
  config = ml_collections.ConfigDict(config.to_dict())
  del config["model"]
  config.model = _source_model_config(config.init_from)
  return config


def sizes_from_model(config):
  """config.data.image_size / text_length 0: the model's image size / text context length."""
  data_cfg = config.get("data")
  if data_cfg is None or (data_cfg.get("image_size", 1) and data_cfg.get("text_length", 1)):
    return config
  cfg = create_model(config.model).cfg
  config = ml_collections.ConfigDict(config.to_dict())
  if not config.data.get("image_size", 1):
    config.data.image_size = cfg.vision.image_size
  if not config.data.get("text_length", 1):
    config.data.text_length = cfg.text.context_length
  return config
