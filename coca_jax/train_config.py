"""The training fields every config shares, with their defaults. Config files start from
`base_config()` and set `model`, `data` and what differs."""
import ml_collections
from ml_collections import config_dict

from coca_jax import sharding
from coca_jax.data.config import DEFAULTS as DATA_DEFAULTS


def base_config() -> ml_collections.ConfigDict:
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
  c.loss = dict(contrastive_weight=1.0, caption_weight=2.0)
  c.optimizer = dict(name="adamw", learning_rate=1e-3, warmup_fraction=0.02, warmup_steps=0,
                     decay="cosine", end_learning_rate=0.0, b1=0.9, b2=0.98, eps=1e-6,
                     weight_decay=0.1, grad_clip_norm=1.0)
  # Mesh axis sizes; -1 takes the devices left over. `slice` spans TPU slices (DCN).
  c.mesh = dict(slice=1, data=-1, fsdp=1, tensor=1)
  c.logical_rules = [list(rule) for rule in sharding.DEFAULT_RULES]
  c.checkpoint = dict(every_steps=500, max_to_keep=3, async_save=True)
  c.log_every_steps = 50
  c.eval_every_steps = 500  # 0: only at the end
  # Evaluators (field meanings: coca_jax/evals/__init__.py). eval.py runs the same ones.
  c.evals = dict(zeroshot=True, val_loss=True, captions=True, batch_size=256,
                 num_caption_examples=256, max_caption_length=0, gallery=8,
                 retrieval=False, generative_zeroshot=False, caption_min_length=0,
                 datasets=dict(zeroshot="", retrieval="", captions=""), text_key="",
                 label_key="", zeroshot_templates="", text_batch_size=256,
                 retrieval_captions_per_image=0, retrieval_pictures=4,
                 generative_class_chunk=8)
  # Params-only initialisation (a checkpoint, an export or a converted open_clip model).
  c.init_from = ""
  # "pretrain" (CoCa's losses), or "probe" / "classify" (coca_jax/classify.py, `classify`).
  c.task = "pretrain"
  # Param path prefixes kept fixed, outside the optimized state ("contrastive_only": the params
  # only the contrastive loss uses).
  c.freeze = ()
  c.debug = dict(inject_nan_at_step=-1)  # tests: NaN images at this step
  c.nonfinite = "error"  # "error": stop naming the step; "skip": drop that update and go on
  c.distributed = dict(enabled="auto", coordinator_address="",
                       num_processes=config_dict.placeholder(int),
                       process_id=config_dict.placeholder(int),
                       initialization_timeout_s=300, heartbeat_timeout_s=100)
  return c
