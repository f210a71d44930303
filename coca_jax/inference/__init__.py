"""Using a trained model: caption generation and batch inference over piles of images.

  decode.py   `generate`: greedy, beam search, top-k / top-p sampling with a KV cache, inside
              one jitted loop; `GenerationConfig` and its checks
  batch.py    captions and embeddings for a folder, a glob or a list of image paths
              (`python -m coca_jax.inference.batch`)
  flags.py    the decoding command-line flags eval.py and batch.py share
"""
from coca_jax.inference.decode import Captions, GenerationConfig, generate

__all__ = ["Captions", "GenerationConfig", "generate"]
