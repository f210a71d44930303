"""Train a SentencePiece model (pad=0, unk=1, bos=2, eos=3) from a dataset's captions.

  python -m coca_jax.tokenizers train --dataset=coca_shapes --vocab_size=1000 --output=x.model
  python -m coca_jax.tokenizers train --dataset=mine --format=csv --path=/data/train.csv \\
      --text_key=title --vocab_size=32000 --output=mine.model

--dataset is a TFDS name (with --data_dir), or with --format/--path a name for people's own files
(read in place; see coca_jax/data/formats.py).
"""
import argparse
import json
import sys

from etils import epath


def main(argv=None):
  """Runs the command above on `argv` (default: sys.argv[1:]).

  Writes the model to --output (parent directories created) and prints one JSON line: output,
  captions (the count read), pieces (the vocabulary size) and bytes. Exits with a message when
  the dataset has no captions.
  """
  parser = argparse.ArgumentParser(prog="python -m coca_jax.tokenizers", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  train = commands.add_parser("train", help="train a SentencePiece model from captions")
  train.add_argument("--dataset", required=True)
  train.add_argument("--split", default="train")
  train.add_argument("--data_dir", default=None)
  train.add_argument("--format", default="tfds")
  train.add_argument("--path", default=None)
  train.add_argument("--text_key", default=None)
  train.add_argument("--separator", default=None)
  train.add_argument("--vocab_size", type=int, required=True)
  train.add_argument("--model_type", default="bpe", choices=("bpe", "unigram"))
  train.add_argument("--output", required=True)
  args = parser.parse_args(argv)

  # Imported here: the data package pulls in TensorFlow Datasets.
  from coca_jax.data import sources  # pylint: disable=import-outside-toplevel
  from coca_jax.tokenizers import sentencepiece  # pylint: disable=import-outside-toplevel
  spec = {"name": args.dataset, "split": args.split, "format": args.format, "path": args.path,
          "text_key": args.text_key, "separator": args.separator}
  captions = list(sources.iter_captions(spec, args.data_dir))
  if not captions:
    sys.exit(f"no captions found in {spec}")
  model = sentencepiece.train(captions, args.vocab_size, model_type=args.model_type)
  epath.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
  epath.Path(args.output).write_bytes(model)
  pieces = sentencepiece.SentencePieceTokenizer(model).vocab_size
  print(json.dumps({"output": args.output, "captions": len(captions), "pieces": pieces,
                    "bytes": len(model)}))


if __name__ == "__main__":
  main()
