"""coca_jax: CoCa (Contrastive Captioners, Yu et al. 2022) in JAX/Flax.

The names users import: `create_model` and `CoCa` (the Flax module), `ModelConfig`, `load`
(an exported model: `model, params, tokenizer = coca_jax.load(DIR)`), and `generate` with its
`GenerationConfig` (captions). The packages, one concern each:

  model/        Flax modules, model config, the classifier head, param adaptation
  data/         datasets, preprocessing and resumable batch iterators
  tokenizers/   SentencePiece and CLIP BPE tokenizers behind one interface
  parallel/     the device mesh, logical axis rules and the processes of a run
  checkpoints/  train state, params-only directories and data-iterator state on disk
  train/        configs, the train state, step, losses, optimizers, loop and the two trainers
  evals/        zero-shot, retrieval, captioning and validation-loss evaluators
  inference/    caption decoding and batch inference over piles of images
  convert/      open_clip weights to params and back
  export/       a self-contained params directory for other JAX projects, and `load`
  tools/        ahead-of-time compilation, FLOP counts and parameter summaries
"""
from coca_jax.export import load
from coca_jax.inference.decode import GenerationConfig, generate
from coca_jax.model import CoCa, ModelConfig, create_model

__all__ = ["CoCa", "GenerationConfig", "ModelConfig", "create_model", "generate", "load"]
