"""The CPU training step of an earlier revision against the work tree's, in one process.

The package as it was at --before (`git archive`) is imported under another name
(coca_jax_before) beside the work tree's coca_jax; both compile the same model config's step
(the same params, batch, losses and AdamW as `vs_open_clip.py`) and they take turns as there
(common.alternating_seconds), so that both see the same machine load. One JSON line: both
medians, the speed-up, both first losses (they must agree to float32 rounding).

  python benchmarks/before_after.py --before=316290d --threads=1
  python benchmarks/before_after.py --before=HEAD~1 --config=configs/openclip_b32.py --batch=8

Model configs only (the model, its losses and the step): the revision must have
coca_jax.create_model and coca_jax.train.losses.coca_loss.
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BEFORE_PACKAGE = "coca_jax_before"


def export_package(revision, into):
  """coca_jax as at `revision`, renamed BEFORE_PACKAGE under `into`."""
  archive = subprocess.run(["git", "-C", REPO, "archive", revision, "coca_jax"],
                           check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
  root = pathlib.Path(into) / "coca_jax"
  for path in root.rglob("*.py"):
    path.write_text(re.sub(r"\bcoca_jax\b", BEFORE_PACKAGE, path.read_text()))
  root.rename(pathlib.Path(into) / BEFORE_PACKAGE)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--before", required=True, help="a git revision")
  parser.add_argument("--config", default="configs/bench_small.py")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--threads", default="1", help="'1' (one pinned CPU) or 'all'")
  parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
  parser.add_argument("--block", type=int, default=2, help="timed steps of one side in a row")
  parser.add_argument("--rewarm", type=int, default=1,
                      help="untimed steps of a side before each of its blocks "
                           "(common.alternating_seconds)")
  args = parser.parse_args()

  sys.path.insert(0, HERE)
  from vs_open_clip import SINGLE_THREAD_XLA_FLAGS, pin_threads  # pylint: disable=g-import-not-at-top
  if args.threads == "1":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                               + SINGLE_THREAD_XLA_FLAGS).strip()
  pin_threads(args.threads)
  exported = tempfile.mkdtemp()
  export_package(args.before, exported)
  sys.path.insert(0, exported)
  import importlib  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top

  config, _ = common.load_config(os.path.join(REPO, args.config))
  model_config = common.model_dict(config)
  tx = optax.adamw(1e-5, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1)
  sides, params0 = {}, None
  for side, package in (("before", BEFORE_PACKAGE), ("after", "coca_jax")):
    model = importlib.import_module(package).create_model(model_config)
    losses = importlib.import_module(package + ".train.losses")
    images, text = map(jnp.asarray, common.synthetic_batch(model.cfg, args.batch, seed=1))
    if params0 is None:  # one set of params for both
      params0 = jax.jit(lambda k, m=model: nn.unbox(m.init(k, images[:1], text[:1]))["params"])(
          jax.random.key(0))

    def step(params, opt_state, images, text, model=model, losses=losses):
      loss_fn = lambda p: losses.coca_loss(model.apply({"params": p}, images, text), text,
                                           pad_id=model.cfg.text.pad_id)["total"]
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    params = jax.tree.map(jnp.copy, params0)
    opt_state = jax.jit(tx.init)(params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, images,
                                                          text).compile()
    sides[side] = {"compiled": compiled, "state": (params, opt_state)}

  def run(side):
    s = sides[side]
    *s["state"], loss = s["compiled"](*s["state"], images, text)
    return float(loss)

  first_loss = {side: run(side) for side in sides}
  times = common.alternating_seconds({side: lambda side=side: run(side) for side in sides},
                                     args.steps, block=args.block, rewarm=args.rewarm)
  median = {side: statistics.median(ts) * 1e3 for side, ts in times.items()}
  print(json.dumps(common.header(
      benchmark="train_step_before_after", config=args.config, batch=args.batch,
      threads=args.threads, before=args.before,
      before_commit=subprocess.run(["git", "-C", REPO, "rev-parse", "--short", args.before],
                                   check=True, capture_output=True, text=True).stdout.strip(),
      after="work tree", xla_flags=os.environ.get("XLA_FLAGS", ""),
      before_ms=round(median["before"], 1), after_ms=round(median["after"], 1),
      speedup=round(median["before"] / median["after"], 3), steps=args.steps,
      block=args.block, rewarm=args.rewarm,
      first_loss={k: round(v, 5) for k, v in first_loss.items()})), flush=True)


if __name__ == "__main__":
  main()
