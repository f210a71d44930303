"""Zero-shot classification throughput: images/s through the image tower and a cached classifier
(the class-prompt embeddings are computed once per checkpoint, so they are not timed), random
weights, synthetic images. Prints one JSON line per measurement.

  python benchmarks/zero_shot.py --configs=configs/tiny.py,configs/openclip_b32.py
"""
import argparse
import datetime
import importlib.util
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import coca_jax


def load_model_config(path):
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().model


def measure(path, batch, num_classes, repeats):
  model = coca_jax.create_model(load_model_config(path))
  cfg = model.cfg
  size = cfg.vision.image_size
  images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)),
                       jnp.float32)
  text = jnp.zeros((1, cfg.text.context_length), jnp.int32)
  params = jax.jit(lambda k: nn.unbox(model.init(k, images[:1], text))["params"])(
      jax.random.key(0))
  weights = jax.random.normal(jax.random.key(1), (num_classes, cfg.embed_dim))
  weights = weights / jnp.linalg.norm(weights, axis=-1, keepdims=True)

  @jax.jit
  def classify(params, images):
    embed = model.apply({"params": params}, images, method="encode_image")[0]
    return jax.lax.top_k(embed @ weights.T, 5)[1]

  t0 = time.perf_counter()
  classify(params, images).block_until_ready()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    classify(params, images).block_until_ready()
    times.append(time.perf_counter() - t)
  median = statistics.median(times)
  return {"benchmark": "zero_shot", "config": path, "batch": batch, "classes": num_classes,
          "images_per_s": round(batch / median, 2), "median_ms": round(median * 1e3, 2),
          "first_call_s": round(compile_s, 2), "devices": jax.device_count(),
          "backend": jax.default_backend(), "jax": jax.__version__,
          "date": datetime.date.today().isoformat()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="configs/tiny.py,configs/openclip_b32.py")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  for path in args.configs.split(","):
    print(json.dumps(measure(path, args.batch, args.classes, args.repeats)), flush=True)


if __name__ == "__main__":
  main()
