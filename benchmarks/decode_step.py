"""Cost of one KV-cached decoding step against the memory it must read: a decoding step at a
small batch reads every weight of the text towers once (unimodal text, multimodal decoder,
vocabulary projection) and the image's cross-attention keys/values, and does little arithmetic
with them, so its speed is bounded by memory bandwidth. One JSON line per (config, batch):
milliseconds per step (greedy captions of --max_len tokens against 2 tokens, the difference
spread over the extra steps), the bytes a step must read, the bandwidth that implies, and
beside it the bandwidth of a plain XLA matrix product streaming --probe_mb of weights on the
same device (what a step could reach at best).

  python benchmarks/decode_step.py --configs=configs/openclip_b32.py --batch_sizes=4,16
"""
import argparse
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

import coca_jax  # noqa: E402
from coca_jax.inference import decode  # noqa: E402

TEXT_TOWERS = ("text", "decoder")  # params a decoding step reads whole


def _bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def probe_gb_per_s(width: int, batch: int, megabytes: int, runs: int) -> float:
  """GB/s of (batch, width) @ (width, N) float32 with N chosen to stream `megabytes`."""
  n = megabytes * 2**20 // (4 * width)
  x, w = jnp.ones((batch, width)), jnp.ones((width, n))
  fn = jax.jit(lambda x, w: (x @ w).sum())
  fn(x, w).block_until_ready()
  return w.nbytes / common.median_seconds(lambda: fn(x, w).block_until_ready(), runs) / 1e9


def measure(path, model_config, batch, max_len, runs, probe_mb):
  model = coca_jax.create_model(model_config)
  cfg = model.cfg
  images, text = common.synthetic_batch(cfg, batch)
  images = jnp.asarray(images)
  params = jax.jit(lambda k: nn.unbox(model.init(k, images[:1], jnp.asarray(text[:1, :8])))[
      "params"])(jax.random.key(0))
  end_id = cfg.text.eos_id if cfg.text.eos_id is not None else 2
  start_id = 49406 if cfg.text.vocab_size == 49408 else 1
  variables = decode.with_transposed_kernels(model, params)  # as captioning.py
  seconds = {}
  for length in (2, max_len):
    # No end token before the last position and no stop on a pad token: every caption of
    # every row runs the full length.
    gen = decode.GenerationConfig(start_id=start_id, end_id=end_id, pad_id=cfg.text.pad_id,
                                  strategy="greedy", max_len=length, min_len=length - 1,
                                  stop_on_pad=False)
    run = lambda gen=gen: jax.block_until_ready(decode.generate(model, variables, images, gen))
    run()
    seconds[length] = common.median_seconds(run, runs)
  step_s = (seconds[max_len] - seconds[2]) / (max_len - 2)
  weights = _bytes({k: params[k] for k in TEXT_TOWERS if k in params})
  # The image's keys and values in every decoder layer, in the compute dtype.
  cross = (2 * cfg.decoder.depth * batch * cfg.num_image_tokens * cfg.decoder_width
           * jnp.dtype(cfg.dtype).itemsize)
  read = weights + cross
  probe = probe_gb_per_s(cfg.text.width, batch, probe_mb, runs)
  line = common.header(
      benchmark="decode_step", config=path, batch=batch, dtype=cfg.dtype, max_len=max_len,
      seconds_2_tokens=round(seconds[2], 4), seconds_max_len=round(seconds[max_len], 4),
      ms_per_step=round(step_s * 1e3, 2), text_weights_mb=round(weights / 2**20, 3),
      cross_kv_mb=round(cross / 2**20, 3),
      gb_per_s_read=round(read / step_s / 1e9, 2), probe_gb_per_s=round(probe, 2),
      fraction_of_probe=round(read / step_s / 1e9 / probe, 3))
  print(json.dumps(line), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="configs/openclip_b32.py")
  parser.add_argument("--batch_sizes", default="4,16")
  parser.add_argument("--max_len", type=int, default=30)
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--probe_mb", type=int, default=512)
  args = parser.parse_args()
  for path in args.configs.split(","):
    config, _ = common.load_config(path)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
      measure(path, common.model_dict(config), batch, args.max_len, args.runs, args.probe_mb)


if __name__ == "__main__":
  main()
