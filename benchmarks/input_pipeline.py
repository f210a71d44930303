"""Input pipeline throughput on this machine's CPU: one JSON line per measurement.

  python benchmarks/input_pipeline.py [--data_dir=/tmp/coca_bench] [--seconds=10]

Measures, with the train and eval iterators as a trainer uses them (Grain, in-process threads):
  - the embedded dataset at the tiny config's size (32 px, 24 tokens);
  - the embedded dataset at 224 px (its 64 px pictures scaled up);
  - photo-like JPEGs (500x375, converted from a generated CSV collection) at 224 px.
and the fraction of time a training loop would wait for input (`input_wait_s`), with a step
that takes --step_ms without holding the GIL (as a jitted XLA step does).
Data are generated under --data_dir on first use (nothing is downloaded).
"""
import argparse
import io
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from coca_jax import data, tokenizers  # noqa: E402


def photo_collection(root: str, n: int) -> str:
  """n smooth 500x375 JPEGs with captions, as an open_clip CSV; returns the CSV's path."""
  csv = os.path.join(root, "photos", "train.csv")
  if os.path.exists(csv):
    return csv
  os.makedirs(os.path.dirname(csv), exist_ok=True)
  rng = np.random.default_rng(0)
  rows = ["filepath,title"]
  for i in range(n):
    small = rng.integers(0, 256, (12, 16, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(out, "JPEG", quality=90)
    with open(os.path.join(os.path.dirname(csv), f"{i:05d}.jpg"), "wb") as f:
      f.write(out.getvalue())
    rows.append(f"{i:05d}.jpg,a photo number {i} of something colourful")
  with open(csv, "w") as f:
    f.write("\n".join(rows) + "\n")
  return csv


def measure(name, make_iterator, batch, seconds, warmup=3, **fields):
  it = make_iterator()
  iterator = iter(it)
  for _ in range(warmup):
    next(iterator)
  start, images = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    try:
      images += len(next(iterator)["images"])
    except StopIteration:
      iterator = iter(it)
  elapsed = time.perf_counter() - start
  print(json.dumps({"name": name, "batch": batch, **fields,
                    "images_per_s": round(images / elapsed, 1), "seconds": round(elapsed, 1)}),
        flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data_dir", default="/tmp/coca_bench")
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--step_ms", type=float, default=100.0)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  tok = tokenizers.load("embedded")
  base = dict(data_dir=args.data_dir, num_threads=args.threads)
  cases = [
      ("coca_shapes train", dict(base, image_size=32, text_length=24), 256, "train"),
      ("coca_shapes eval", dict(base, image_size=32, text_length=24), 256, "eval"),
      ("coca_shapes train", dict(base, image_size=224, text_length=76), 64, "train"),
  ]
  photos = dict(name="photos", format="csv", path=photo_collection(args.data_dir, 512))
  cases += [
      ("photos 500x375 jpeg train", dict(base, image_size=224, text_length=76, train=photos),
       64, "train"),
      ("photos 500x375 jpeg eval", dict(base, image_size=224, text_length=76, eval=photos),
       64, "eval"),
  ]
  data.prepare(dict(base, train=photos))
  for name, cfg, batch, kind in cases:
    if kind == "train":
      make = lambda cfg=cfg, batch=batch: data.build_train_iterator(  # noqa: E731
          cfg, global_batch_size=batch, seed=0, process_index=0, process_count=1, tokenizer=tok)
    else:
      make = lambda cfg=cfg, batch=batch: data.build_eval_iterator(  # noqa: E731
          cfg, global_batch_size=batch, process_index=0, process_count=1, tokenizer=tok)
    measure(name, make, batch, args.seconds, image_size=cfg["image_size"], threads=args.threads,
            cpus=os.cpu_count())
  measure_wait(dict(base, image_size=32, text_length=24), tok, 64, args.seconds, args.step_ms,
               args.threads)


def measure_wait(cfg, tok, batch, seconds, step_ms, threads):
  """A stand-in training loop: `step_ms` of GIL-free work per batch; reports input wait."""
  it = data.build_train_iterator(cfg, global_batch_size=batch, seed=0, process_index=0,
                                 process_count=1, tokenizer=tok)
  next(it)
  wait0, start, steps = it.input_wait_s, time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    next(it)
    time.sleep(step_ms / 1000)
    steps += 1
  elapsed = time.perf_counter() - start
  print(json.dumps({"name": "input wait in a training loop", "batch": batch,
                    "image_size": cfg["image_size"], "step_ms": step_ms, "threads": threads,
                    "steps_per_s": round(steps / elapsed, 2),
                    "input_wait_fraction": round((it.input_wait_s - wait0) / elapsed, 4)}),
        flush=True)


if __name__ == "__main__":
  main()
