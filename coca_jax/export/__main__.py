"""python -m coca_jax.export --checkpoint=PATH --output=DIR [--dtype=...] [--tokenizer=...]"""
import json

from absl import app, flags

from coca_jax.export import export

flags.DEFINE_string("checkpoint", None, "A training workdir (latest checkpoint), a checkpoint "
                    "step, a params directory or a converted open_clip model.")
flags.DEFINE_string("output", None, "Directory to write.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Storage dtype of the params.")
flags.DEFINE_string("tokenizer", "auto", "A coca_jax.tokenizers spec; 'auto': the one saved "
                    "with the checkpoint, else CLIP BPE for a 49408-token vocabulary; 'none'.")
flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
  """Exports `--checkpoint` to `--output` and prints what `export` wrote as one JSON line."""
  del argv
  f = flags.FLAGS
  tokenizer = {"auto": "auto", "none": None}.get(f.tokenizer, f.tokenizer)
  print(json.dumps(export(f.checkpoint, f.output, f.dtype, tokenizer)))


if __name__ == "__main__":
  app.run(main)
