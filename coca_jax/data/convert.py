"""Convert people's own image-caption files into a TFDS dataset (ArrayRecord), in one command.

  python -m coca_jax.data.convert --name=mine --format=csv --data_dir=/data/tfds \\
      --split=train=/data/train.csv --split=validation=/data/val.csv \\
      [--image_key=filepath --text_key=title --separator=, --max_side=512] [--reprepare]

Formats: csv, tsv, jsonl, webdataset (img2dataset .tar shards), tfrecord (img2dataset). Paths
may be files, directories, globs or {000..099} ranges, local or gs://. Bad records are dropped
and counted; the report (one JSON line) is printed at the end and kept in the dataset's
metadata. Then use it with a dataset spec: dict(format="tfds", path=<printed builder_dir>).
"""
import argparse
import json

from coca_jax.data import formats, local


def main(argv=None):
  """Runs the command above on `argv` (default: sys.argv[1:]): prepares every --split, then
  prints one JSON line with the builder_dir and the bad records dropped, by split and reason."""
  parser = argparse.ArgumentParser(prog="python -m coca_jax.data.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True)
  parser.add_argument("--format", required=True, choices=formats.FORMATS)
  parser.add_argument("--split", action="append", required=True, metavar="SPLIT=PATH")
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--image_key", default=None)
  parser.add_argument("--text_key", default=None)
  parser.add_argument("--separator", default=None)
  parser.add_argument("--max_side", type=int, default=local.MAX_SIDE)
  parser.add_argument("--reprepare", action="store_true",
                      help="Convert again even if a prepared copy exists (its files changed).")
  args = parser.parse_args(argv)
  splits = dict(s.split("=", 1) for s in args.split)
  builder = local.prepare(dict(name=args.name, format=args.format, splits=splits,
                               image_key=args.image_key, text_key=args.text_key,
                               separator=args.separator, max_side=args.max_side), args.data_dir,
                         reprepare=args.reprepare)
  print(json.dumps({"builder_dir": str(builder.data_dir),
                    "bad_records": local.bad_record_report(builder)}))


if __name__ == "__main__":
  main()
