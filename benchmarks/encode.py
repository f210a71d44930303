"""Image and text encoding throughput (embeddings only, as retrieval and zero-shot use them):
random weights, synthetic inputs, median of --runs calls after a compiling call. One JSON line
per (config, tower, batch), with model GFLOP/s from `coca_jax.tools.flops` (image: patch embedding,
ViT and poolers; text: the unimodal tower) and the fraction of --peak_tflops.

  python benchmarks/encode.py --configs=configs/bench_small.py,configs/openclip_b32.py
  python benchmarks/encode.py --configs=configs/coca_base.py --batch_sizes=256 --peak_tflops=790
"""
import argparse
import json
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

import coca_jax  # noqa: E402
from coca_jax.tools import flops as flops_lib  # noqa: E402


def measure(path, model_config, batch, runs, peak_tflops):
  model = coca_jax.create_model(model_config)
  cfg = model.cfg
  images, text = common.synthetic_batch(cfg, batch)
  images, text = jnp.asarray(images), jnp.asarray(text)
  params = jax.jit(lambda k: nn.unbox(model.init(k, images[:1], text[:1]))["params"])(
      jax.random.key(0))
  counts = flops_lib.forward_flops(cfg)
  towers = {
      "image": ("encode_image", images,
                counts["patch_embedding"] + counts["image_encoder"] + counts["poolers"]),
      "text": ("encode_text", text, counts["unimodal_text"]),
  }
  for tower, (method, inputs, flops_per_example) in towers.items():
    fn = jax.jit(lambda p, x, method=method: model.apply({"params": p}, x, method=method)[0])
    t0 = time.perf_counter()
    compiled = fn.lower(params, inputs).compile()
    compile_s = time.perf_counter() - t0
    compiled(params, inputs).block_until_ready()
    seconds = common.median_seconds(lambda: compiled(params, inputs).block_until_ready(), runs)
    tflops = flops_per_example * batch / seconds / 1e12
    line = common.header(benchmark=f"encode_{tower}", config=path, batch=batch, dtype=cfg.dtype,
                         scan_layers=cfg.scan_layers, median_ms=round(seconds * 1e3, 2),
                         examples_per_s=round(batch / seconds, 1),
                         compile_s=round(compile_s, 2),
                         model_gflops_per_example=round(flops_per_example / 1e9, 3),
                         achieved_tflops=round(tflops, 4))
    for peak in peak_tflops:
      line[f"mfu_vs_{peak:g}tflops"] = round(tflops / peak, 4)
    print(json.dumps(line), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="configs/bench_small.py,configs/openclip_b32.py")
  parser.add_argument("--batch_sizes", default="32")
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--dtype", default=None, help="override model.dtype")
  parser.add_argument("--peak_tflops", default="", help="comma-separated peaks")
  args = parser.parse_args()
  peaks = [float(p) for p in args.peak_tflops.split(",") if p]
  for path in args.configs.split(","):
    config, _ = common.load_config(path)
    model_config = common.model_dict(config)
    if args.dtype:
      model_config["dtype"] = args.dtype
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
      measure(path, model_config, batch, args.runs, peaks)


if __name__ == "__main__":
  main()
