"""The caption-decoding command-line flags that eval.py and `python -m coca_jax.inference.batch`
share, each named as the `decode.GenerationConfig` field it sets."""
from typing import Any, Dict

from absl import flags

NAMES = ("strategy", "num_beams", "top_k", "top_p", "temperature", "repetition_penalty",
         "no_repeat_ngram_size")


def define(num_beams: int):
  """Defines the flags of NAMES; `num_beams` is the command's default beam width."""
  flags.DEFINE_enum("strategy", "greedy", ["greedy", "beam", "sample"], "Caption decoding.")
  flags.DEFINE_integer("num_beams", num_beams, "Beam search width.")
  flags.DEFINE_integer("top_k", 0, "Sampling: keep the k most likely tokens (0: all).")
  flags.DEFINE_float("top_p", 1.0, "Sampling: nucleus probability.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
  flags.DEFINE_float("repetition_penalty", 1.0, "Seen tokens' scores / this (x this if < 0).")
  flags.DEFINE_integer("no_repeat_ngram_size", 0, "No n-gram of this size twice (0: off).")


def values(flag_values=flags.FLAGS) -> Dict[str, Any]:
  """{name: value} of the flags of NAMES."""
  return {name: flag_values[name].value for name in NAMES}
