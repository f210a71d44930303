"""The paper's models at the paper's global batch (65,536) compiled for TPU pods on a CPU machine
(coca_jax.tools.aot; needs the `tpu` extra): per-chip memory against HBM, with and without remat.

Each row is its own `python -m coca_jax.tools.aot` process (a failed or oversized compile leaves the
others standing), appended as a JSON line to benchmarks/results/tpu_aot.jsonl; the markdown
table benchmarks/results/tpu_aot.md is rewritten from that file after every row. Rows already
in the JSON file are skipped, so an interrupted run continues where it stopped. Where the
plain step does not fit, the smallest gradient accumulation that fits is searched for
(micro-batches of 65,536 / k; the contrastive loss still spans the whole batch).

  python benchmarks/tpu_aot_table.py                     # every row, most important first
  python benchmarks/tpu_aot_table.py --models=coca_2b --topologies=v4:16x16x8
  python benchmarks/tpu_aot_table.py --markdown_only     # only rewrite the table
  python benchmarks/tpu_aot_table.py --topologies=v5e:16x16 --redo   # after a step change
"""
import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NAMES = {"v4:16x16x8": "v4-2048", "v5e:16x16": "v5e-256", "v5p:8x8x8": "v5p-512"}
MODELS = ("coca_2b", "coca_base", "coca_large")
TOPOLOGIES = ("v4:16x16x8", "v5e:16x16", "v5p:8x8x8")
REMATS = ("full", "none")


def _key(row):
  return (pathlib.Path(row["config"]).stem, row["topology"], row["remat_policy"],
          row.get("grad_accum_steps", 1), row.get("global_batch_size"))


def load_rows(path):
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compile_row(model, topology, remat, accum, batch, jsonl, timeout):
  command = [sys.executable, "-m", "coca_jax.tools.aot", f"--config=configs/{model}.py",
             f"--topology={topology}", "--mesh=auto", f"--remat_policy={remat}",
             f"--config.global_batch_size={batch}", f"--config.grad_accum_steps={accum}",
             f"--output={jsonl}"]
  print("$ " + " ".join(command[1:]), flush=True)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
  t0 = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    row = {"config": f"configs/{model}.py", "topology": topology, "remat_policy": remat,
           "grad_accum_steps": accum, "global_batch_size": batch,
           "error": f"compile did not finish within {timeout} s"}
  else:
    if done.returncode == 0:
      row = json.loads(done.stdout.strip().splitlines()[-1])
      if "gib_per_chip" in row:
        print(f"  {row['gib_per_chip']:.2f} GiB per chip of {row['hbm_gib']:.0f}, "
              f"compiled in {row['compile_s']:.0f} s", flush=True)
      else:
        print(f"  does not fit: {row.get('out_of_memory')}", flush=True)
      return row
    row = {"config": f"configs/{model}.py", "topology": topology, "remat_policy": remat,
           "grad_accum_steps": accum, "global_batch_size": batch,
           "error": (done.stderr.strip().splitlines() or ["?"])[-1][:400]}
  row["wall_s"] = round(time.perf_counter() - t0, 1)
  print(f"  failed: {row['error']}", flush=True)
  with open(jsonl, "a") as f:
    f.write(json.dumps(row) + "\n")
  return row


def accum_to_try(row, batch, chips):
  """The smallest power-of-two accumulation whose micro-batch activations should fit:
  temporaries scale about with the micro-batch, the state does not."""
  if "temp_bytes" in row:
    temp = row["temp_bytes"]
    fixed = row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"]
    hbm = row["hbm_gib"] * 2 ** 30
  elif "temp_bytes_required" in row:  # the compiler refused: its error gave the figures
    temp = row["temp_bytes_required"]
    fixed = row["state_bytes_per_chip"]
    hbm = row["hbm_available_bytes"]
  else:
    return None
  room = 0.9 * hbm - fixed
  if room <= 0:
    return None
  k = 2 ** math.ceil(math.log2(max(temp / room, 1) * row["grad_accum_steps"]))
  k = max(k, 2 * row["grad_accum_steps"])
  return k if batch // k >= chips and batch % k == 0 else None


def markdown(rows):
  lines = [
      "| model | pod | mesh (data x fsdp) | remat | grad accum | per-chip GiB (args + out + "
      "temp - aliased) | HBM GiB | fits | compile s | XLA TFLOP/chip* |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  order = {m: i for i, m in enumerate(("coca_base", "coca_large", "coca_2b"))}
  topo_order = {t: i for i, t in enumerate(TOPOLOGIES)}
  rows = sorted(rows, key=lambda r: (order.get(pathlib.Path(r["config"]).stem, 9),
                                     topo_order.get(r["topology"], 9),
                                     r["remat_policy"] != "full", r.get("grad_accum_steps", 1)))
  for r in rows:
    model = pathlib.Path(r["config"]).stem
    pod = NAMES.get(r["topology"], r["topology"])
    if "error" in r:
      lines.append(f"| {model} | {pod} | | {r['remat_policy']} | {r['grad_accum_steps']} | "
                   f"failed: {r['error'][:80]} | | | | |")
      continue
    mesh = f"{r['mesh']['data']} x {r['mesh']['fsdp']}"
    if "gib_per_chip" not in r:  # refused by the compiler: out of memory
      needed = (f"> {r['gib_per_chip_at_least']:.1f} (temp alone "
                f"{r['temp_bytes_required'] / 2**30:.1f}; compiler: out of memory)"
                if "gib_per_chip_at_least" in r else "out of memory")
      lines.append(f"| {model} | {pod} | {mesh} | {r['remat_policy']} | "
                   f"{r['grad_accum_steps']} | {needed} | {r['hbm_gib']:.0f} | no | "
                   f"{r['compile_s']:.0f} | |")
      continue
    lines.append(
        f"| {model} | {pod} | {mesh} | {r['remat_policy']} | {r['grad_accum_steps']} | "
        f"{r['gib_per_chip']:.1f} ({r['argument_bytes'] / 2**30:.1f} + "
        f"{r['output_bytes'] / 2**30:.1f} + {r['temp_bytes'] / 2**30:.1f} - "
        f"{r['alias_bytes'] / 2**30:.1f}) | {r['hbm_gib']:.0f} | "
        f"{'yes' if r['fits'] else 'no'} | {r['compile_s']:.0f} | "
        f"{r['xla_flops_per_chip'] / 1e12:.1f} |")
  lines += [
      "",
      "Global batch 65,536, bfloat16 compute, float32 params, the paper's Adafactor, scanned "
      "layers, compiled by libtpu for the named topology on a CPU-only machine "
      "(`python benchmarks/tpu_aot_table.py`). Memory is XLA's per-chip memory analysis of "
      "the compiled step; the state is donated, so its output aliases its input.",
      "",
      "Mesh (`--mesh=auto`, the same as the paper configs' own `fsdp: 0`): data x fsdp, "
      "fsdp the largest axis that divides the models' widths (768, 1,024, 1,408) and that "
      "whole axes of the chips' torus make; a width that fsdp does not divide would leave its "
      "weights replicated (fsdp over all 2,048 chips would divide none). The batch is split "
      "over all chips either way.",
      "",
      "Rows that do not fit were refused by the TPU compiler itself; their figure is the "
      "temporaries its error reported plus the state's shard, and their compile time is the "
      "time until it gave up. Where a plain step does not fit, the rows below it accumulate "
      "gradients over micro-batches (`grad_accum_steps`; the contrastive loss still spans "
      "the whole 65,536).",
      "",
      "\\* XLA's cost analysis counts a scanned layer stack's loop body once, not once per "
      "layer, so with scanned layers its FLOP count is far below the model's "
      "(`model_flops_per_chip` in the JSON lines, from coca_jax.tools.flops).",
  ]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
  parser.add_argument("--remat", default=",".join(REMATS))
  parser.add_argument("--batch", type=int, default=65536)
  parser.add_argument("--no_accum", action="store_true",
                      help="do not search for an accumulation that fits")
  parser.add_argument("--timeout", type=int, default=3600, help="seconds per compile")
  parser.add_argument("--jsonl", default=str(RESULTS / "tpu_aot.jsonl"))
  parser.add_argument("--markdown", default=str(RESULTS / "tpu_aot.md"))
  parser.add_argument("--markdown_only", action="store_true")
  parser.add_argument("--redo", action="store_true",
                      help="drop the selected rows' earlier results (e.g. after a change to "
                           "the train step) and compile them again")
  args = parser.parse_args()
  jsonl, md = pathlib.Path(args.jsonl), pathlib.Path(args.markdown)
  jsonl.parent.mkdir(parents=True, exist_ok=True)

  if not args.markdown_only:
    plan = [(t, m, r) for t in args.topologies.split(",") for m in args.models.split(",")
            for r in args.remat.split(",")]
    if args.redo:
      keep = [r for r in load_rows(jsonl) if (r["topology"], _key(r)[0], r["remat_policy"])
              not in set(plan) or r.get("global_batch_size") != args.batch]
      jsonl.write_text("".join(json.dumps(r) + "\n" for r in keep))
    # First every plain row (the paper's pod first, the largest model first), then the
    # accumulation searches for those that do not fit.
    for topology, model, remat in plan:
      if (model, topology, remat, 1, args.batch) not in {_key(r) for r in load_rows(jsonl)}:
        compile_row(model, topology, remat, 1, args.batch, jsonl, args.timeout)
        md.write_text(markdown(load_rows(jsonl)))
    for topology, model, remat in [] if args.no_accum else plan:
      done = {_key(r): r for r in load_rows(jsonl)}
      row = done.get((model, topology, remat, 1, args.batch))
      while row is not None and "error" not in row and not row["fits"]:
        k = accum_to_try(row, args.batch, row["chips"])
        if k is None:
          break
        row = done.get((model, topology, remat, k, args.batch)) or compile_row(
            model, topology, remat, k, args.batch, jsonl, args.timeout)
        md.write_text(markdown(load_rows(jsonl)))
  md.write_text(markdown(load_rows(jsonl)))
  print(md.read_text())


if __name__ == "__main__":
  main()
