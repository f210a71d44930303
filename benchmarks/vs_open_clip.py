"""Training step side by side: open_clip (PyTorch, CPU) and coca_jax on the same architecture,
weights, batch, losses (caption 2, contrastive 1), AdamW and float32, timed in one run.

Each (config, thread setting) runs in its own process (XLA's thread flags must be set before
jax starts); inside it the two implementations take turns, so that both see the same machine
load: a turn is one untimed step, then --block timed ones (common.alternating_seconds says why
the untimed step: a VM's host may take back the memory a side left free while the other ran).
One JSON line per implementation, then one with the ratio. Model FLOPs are
`coca_jax.tools.flops` (per tower, training = 3x forward), the same figure for both sides.

  python benchmarks/vs_open_clip.py --peak_gflops=134        # bench-small and openclip_b32,
                                                              # all cores and one thread
  python benchmarks/vs_open_clip.py --configs=configs/bench_small.py --threads=all --steps=3

One-thread workers are pinned to one CPU (sched_setaffinity) on top of
torch.set_num_threads(1) and XLA's single-thread flags (the flags alone did not keep XLA on one
core). Fractions are of --peak_gflops (the same figure for both thread settings; without it, of
the probe); every line also reports a 2048^2 float32 matmul probe of torch and XLA run in the
same process, at its thread setting and load. Both sides' processes run with glibc's
`glibc.malloc.hugetlb=1`, as coca_jax's commands do (coca_jax/parallel/host_memory.py);
`--huge_pages=off,on` measures without and with it (the line's "glibc_tunables" says which).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_BATCHES = {"bench_small": 32, "openclip_b32": 8}
# Published open_clip models for configs in that layout that carry no OPEN_CLIP dict.
OPEN_CLIP_NAMES = {"openclip_b32": "coca_ViT-B-32", "openclip_l14": "coca_ViT-L-14"}
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def config_name(path):
  return os.path.splitext(os.path.basename(path))[0]


# --- the worker: one config, one thread setting ------------------------------------------

def open_clip_model(path, seed):
  """open_clip's own initialisation, seeded; text_decoder.text_projection (left as torch.empty
  by open_clip) is drawn too."""
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  from common import _exec_config  # pylint: disable=g-import-not-at-top
  module = _exec_config(path)
  torch.manual_seed(seed)
  if hasattr(module, "OPEN_CLIP"):
    model = open_clip.coca_model.CoCa(**module.OPEN_CLIP)
  else:
    model = open_clip.create_model(OPEN_CLIP_NAMES[config_name(path)], pretrained=None)
  proj = model.text_decoder.text_projection
  with torch.no_grad():
    proj.normal_(std=proj.shape[0] ** -0.5)
  return model


def matmul_gflops(torch, jnp, jax, n=2048, runs=5):
  """Both libraries' best f32 matmul speed at this process's thread setting and load."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  ta, tb, ja, jb = torch.from_numpy(a), torch.from_numpy(b), jnp.asarray(a), jnp.asarray(b)
  dot = jax.jit(jnp.dot)
  best = {}
  for name, fn in (("torch", lambda: torch.mm(ta, tb)),
                   ("xla", lambda: dot(ja, jb).block_until_ready())):
    fn()
    times = []
    for _ in range(runs):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
    best[name] = round(2 * n ** 3 / min(times) / 1e9, 1)
  return best


def pin_threads(threads):
  """One CPU for this process when `threads` is "1" (before torch and jax start their pools);
  torch then also runs one thread."""
  if threads == "1":  # one CPU for both sides, whatever their thread pools do
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(1)


def side_by_side(path, batch=0, model_overrides=""):
  """The two training steps on the same weights, batch, losses and AdamW: a dict with
  "jax_step" and "torch_step" (each runs one step and returns its loss as a float),
  "compiled" (the jitted coca_jax step), "compile_s", "cfg" (the ModelConfig), "batch" and
  "torch_model"."""
  import torch  # pylint: disable=g-import-not-at-top
  import open_clip  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  import common  # pylint: disable=g-import-not-at-top
  from train_step import make_train_step  # pylint: disable=g-import-not-at-top
  import coca_jax  # pylint: disable=g-import-not-at-top
  from coca_jax.convert.open_clip import convert_state_dict  # pylint: disable=g-import-not-at-top

  config, _ = common.load_config(path)
  model_config = common.model_dict(config)
  model_config.update(json.loads(model_overrides or "{}"))
  model = coca_jax.create_model(model_config)
  cfg = model.cfg
  batch = batch or DEFAULT_BATCHES.get(config_name(path), config.get("global_batch_size"))
  images, text = common.synthetic_batch(cfg, batch, seed=1)

  # The same weights on both sides.
  torch_model = open_clip_model(path, seed=0).train()
  state_dict = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  params = jax.device_put(convert_state_dict(state_dict, model_config))
  del state_dict

  # The same optimizer on both sides (AdamW, decay on every parameter).
  hp = dict(lr=1e-5, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1)
  tx = optax.adamw(hp["lr"], b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
                   weight_decay=hp["weight_decay"])
  opt_state = jax.jit(tx.init)(params)
  step = make_train_step(model, tx, cfg.text.pad_id)
  jax_images, jax_text = jnp.asarray(images), jnp.asarray(text)
  t0 = time.perf_counter()
  compiled = step.lower(params, opt_state, jax_images, jax_text).compile()
  compile_s = time.perf_counter() - t0

  optimizer = torch.optim.AdamW(torch_model.parameters(), lr=hp["lr"], betas=(hp["b1"], hp["b2"]),
                                eps=hp["eps"], weight_decay=hp["weight_decay"])
  loss_fn = open_clip.loss.CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0,
                                    pad_id=cfg.text.pad_id)
  torch_images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  torch_text = torch.from_numpy(text.astype(np.int64))

  state = {"params": params, "opt_state": opt_state}

  def jax_step():
    state["params"], state["opt_state"], loss = compiled(state["params"], state["opt_state"],
                                                         jax_images, jax_text)
    return float(loss)  # waits for the step

  def torch_step():
    optimizer.zero_grad(set_to_none=True)
    out = torch_model(torch_images, torch_text)
    clip_loss, caption_loss = loss_fn(out["image_features"], out["text_features"],
                                      out["logits"], out["labels"], out["logit_scale"])
    loss = clip_loss + caption_loss
    loss.backward()
    optimizer.step()
    return loss.item()

  return dict(jax_step=jax_step, torch_step=torch_step, compiled=compiled,
              compile_s=compile_s, cfg=cfg, batch=batch, torch_model=torch_model)


def worker(args):
  pin_threads(args.threads)
  import torch  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, HERE)
  import common  # pylint: disable=g-import-not-at-top
  from coca_jax.tools import flops as flops_lib  # pylint: disable=g-import-not-at-top

  path = args.configs
  pair = side_by_side(path, args.batch, args.model_overrides)
  jax_step, torch_step, cfg, batch = (pair[k] for k in ("jax_step", "torch_step", "cfg",
                                                        "batch"))
  compile_s = pair["compile_s"]

  # First losses: same weights and data, so they must agree (a check that both sides do the
  # same computation).
  first_loss = {"coca_jax": jax_step(), "open_clip": torch_step()}
  for _ in range(args.warmup - 1):
    jax_step()
    torch_step()
  loads = []
  times = common.alternating_seconds({"coca_jax": jax_step, "open_clip": torch_step},
                                     args.steps, block=args.block, rewarm=args.rewarm,
                                     after_turn=lambda: loads.append(os.getloadavg()[0]))

  model_flops = flops_lib.forward_flops(cfg)["train"] * batch
  probe = matmul_gflops(torch, jnp, jax)
  peak = args.peak_gflops or max(probe.values())
  base = common.header(benchmark="train_step_vs_open_clip", config=path, batch=batch,
                       threads=args.threads, torch_threads=torch.get_num_threads(),
                       # the vector extensions torch's kernels use (ATEN_CPU_CAPABILITY caps it)
                       torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                       xla_flags=os.environ.get("XLA_FLAGS", ""), dtype=cfg.dtype,
                       glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
                       block=args.block, rewarm=args.rewarm,
                       scan_layers=cfg.scan_layers, remat=cfg.remat_policy,
                       model_gflops_per_step=round(model_flops / 1e9, 2),
                       load_avg_1m_during=round(statistics.mean(loads), 2),
                       cpu_affinity=sorted(os.sched_getaffinity(0)),
                       matmul_probe_gflops=probe)
  medians = {}
  for name, ts in times.items():
    medians[name] = statistics.median(ts)
    line = {**base, "impl": name, "median_ms": round(medians[name] * 1e3, 1),
            "min_ms": round(min(ts) * 1e3, 1), "steps": len(ts),
            "examples_per_s": round(batch / medians[name], 2),
            "achieved_gflops": round(model_flops / medians[name] / 1e9, 1),
            "first_loss": round(first_loss[name], 5)}
    if name == "coca_jax":
      line["compile_s"] = round(compile_s, 1)
    line["peak_gflops"] = round(peak, 1)
    line["fraction_of_peak"] = round(model_flops / medians[name] / 1e9 / peak, 3)
    print(json.dumps(line), flush=True)
  print(json.dumps({**base, "impl": "ratio",
                    "speedup_coca_jax_over_open_clip": round(
                        medians["open_clip"] / medians["coca_jax"], 3),
                    "first_loss_abs_diff": abs(first_loss["coca_jax"] - first_loss["open_clip"])}),
        flush=True)


# --- the driver: one worker process per config and thread setting -------------------------

def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="configs/bench_small.py,configs/openclip_b32.py")
  parser.add_argument("--batch", type=int, default=0,
                      help="0: bench_small 32, openclip_b32 8, else the config's batch")
  parser.add_argument("--threads", default="all,1", help="'all' and/or '1'")
  parser.add_argument("--steps", type=int, default=6, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
  parser.add_argument("--block", type=int, default=2,
                      help="timed steps of one side in a row (common.alternating_seconds)")
  parser.add_argument("--rewarm", type=int, default=1,
                      help="untimed steps of a side before each of its blocks; "
                           "--rewarm=0 --block=1: strict step-by-step alternation")
  parser.add_argument("--peak_gflops", type=float, default=0.0, help="all-core peak")
  parser.add_argument("--model_overrides", default="", help="JSON dict merged into config.model")
  parser.add_argument("--huge_pages", default="on",
                      help="'on' and/or 'off': glibc.malloc.hugetlb for both sides' processes "
                           "(coca_jax's commands turn it on; coca_jax/parallel/host_memory.py)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return
  from coca_jax.parallel import host_memory  # pylint: disable=g-import-not-at-top
  failed = False
  settings = [(path, threads, pages) for path in args.configs.split(",")
              for threads in args.threads.split(",") for pages in args.huge_pages.split(",")]
  for path, threads, pages in settings:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["GLIBC_TUNABLES"] = host_memory.with_huge_pages(os.environ.get("GLIBC_TUNABLES", ""),
                                                        on=pages == "on")
    if threads == "1":
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA_FLAGS).strip()
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--configs={path}",
           f"--threads={threads}", f"--batch={args.batch}", f"--steps={args.steps}",
           f"--warmup={args.warmup}", f"--block={args.block}", f"--rewarm={args.rewarm}",
           f"--peak_gflops={args.peak_gflops}",
           f"--model_overrides={args.model_overrides}"]
    failed |= subprocess.run(cmd, env=env, cwd=REPO, check=False).returncode != 0
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
