"""Training-step throughput and model-FLOP utilisation on synthetic in-memory data.

Prints one JSON line per measurement: median ms/step after warm-up, examples/s, compile time
(reported apart), model FLOPs per example (coca_jax.tools.flops, per tower) next to XLA's own count
of the compiled step, achieved TFLOP/s and MFU against the peaks given on the command line.
Imports neither tensorflow, tensorflow-datasets nor clu, so it runs on a bare accelerator host.

  python benchmarks/train_step.py --config=configs/coca_base.py --batch_sizes=256,512 \
      --peak_tflops=989,790       # an H200: specification and measured bf16 peaks
  python benchmarks/train_step.py --config=configs/tiny.py --batch_sizes=8 --steps=2
"""
import argparse
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

import coca_jax  # noqa: E402
from coca_jax.tools import flops as flops_lib  # noqa: E402
from coca_jax.train import losses  # noqa: E402


def make_train_step(model, optimizer, pad_id):
  def loss_fn(params, images, text):
    out = model.apply({"params": params}, images, text)
    return losses.coca_loss(out, text, pad_id=pad_id)["total"]

  def train_step(params, opt_state, images, text):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, text)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(train_step, donate_argnums=(0, 1))


def measure(model_config, batch, steps, warmup, peaks, compile_only=False):
  model = coca_jax.create_model(model_config)
  cfg = model.cfg
  images, text = map(jnp.asarray, common.synthetic_batch(cfg, batch))
  init = lambda k: nn.unbox(model.init(k, images[:1], text[:1]))["params"]
  optimizer = optax.adamw(1e-4, weight_decay=0.01)
  step = make_train_step(model, optimizer, cfg.text.pad_id)
  if compile_only:  # shapes only: nothing is allocated
    params = jax.eval_shape(init, jax.random.key(0))
    opt_state = jax.eval_shape(optimizer.init, params)
  else:
    params = jax.jit(init)(jax.random.key(0))
    opt_state = jax.jit(optimizer.init)(params)

  t0 = time.perf_counter()
  compiled = step.lower(params, opt_state, images, text).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  memory = compiled.memory_analysis()
  peak_bytes = None
  if memory is not None:
    peak_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                  + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  model_flops = flops_lib.forward_flops(cfg)["train"] * batch
  result = {
      "benchmark": "train_step", "batch": batch, "dtype": cfg.dtype,
      "scan_layers": cfg.scan_layers, "remat": cfg.remat_policy,
      "attention_impl": cfg.attention_impl, "caption_loss_chunks": cfg.caption_loss_chunks,
      "compile_s": round(compile_s, 2),
      "model_gflops_per_step": round(model_flops / 1e9, 2),
      "xla_gflops_per_step": round(xla_flops / 1e9, 2),
      "bytes_per_device": peak_bytes,
      "temp_bytes": memory.temp_size_in_bytes if memory is not None else None,
  }
  if compile_only:
    return result

  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, images, text)
    loss.block_until_ready()
    if i >= warmup:
      times.append(time.perf_counter() - t)
  median = statistics.median(times)
  result.update({
      "median_ms": round(median * 1e3, 3), "examples_per_s": round(batch / median, 2),
      "loss": float(loss), "achieved_tflops": round(model_flops / median / 1e12, 3),
  })
  for peak in peaks:
    result[f"mfu_vs_{peak:g}tflops"] = round(model_flops / median / (peak * 1e12), 4)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch_sizes", default="8")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--dtype", default=None, help="override model.dtype")
  parser.add_argument("--remat_policy", default=None, help="override model.remat_policy")
  parser.add_argument("--scan_layers", default=None, choices=[None, "true", "false"])
  parser.add_argument("--model_overrides", default="",
                      help='JSON merged into config.model, e.g. {"attention_impl": "cudnn"}')
  parser.add_argument("--peak_tflops", default="", help="comma-separated peaks for MFU")
  parser.add_argument("--output", default=None, help="also append the JSON lines here")
  parser.add_argument("--compile_only", action="store_true",
                      help="compile and report memory and XLA FLOPs, without running")
  args = parser.parse_args()

  config, loader = common.load_config(args.config)
  model_config = common.model_dict(config)
  if args.dtype:
    model_config["dtype"] = args.dtype
  if args.remat_policy:
    model_config["remat_policy"] = args.remat_policy
  if args.scan_layers:
    model_config["scan_layers"] = args.scan_layers == "true"
  model_config.update(json.loads(args.model_overrides or "{}"))
  peaks = [float(p) for p in args.peak_tflops.split(",") if p]
  for batch in [int(b) for b in args.batch_sizes.split(",")]:
    header = common.header(config=args.config, config_loader=loader)
    try:
      line = {**header, **measure(model_config, batch, args.steps, args.warmup, peaks,
                                     args.compile_only)}
    except Exception as e:  # an out-of-memory batch size is a result too
      line = {**header, "batch": batch, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    print(json.dumps(line), flush=True)
    if args.output:
      with open(args.output, "a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
  main()
