"""Where a CPU training step's time goes: coca_jax (XLA) beside open_clip (torch), on the step
that `vs_open_clip.py` times (same architecture, weights, batch, losses and AdamW).

Each side runs a few profiled steps in one process: XLA's per-operation trace
(`jax.profiler`, one event per executed HLO fusion or op) and torch's profiler (self time per
aten op, input shapes recorded). Every operation goes into one category: matmul, vocabulary
projection (matmuls and the caption loss over the vocabulary), layer norm, softmax / attention,
GELU, embedding gather, optimizer update, copies / transposes, other elementwise. Prints one
JSON line per side (ms per step per category) and one table in Markdown.

  python benchmarks/profile_step.py --config=configs/bench_small.py --threads=1
  XLA_FLAGS=--xla_cpu_max_isa=AVX2 ATEN_CPU_CAPABILITY=avx2 \\
      python benchmarks/profile_step.py --config=configs/bench_small.py --threads=all

XLA's categories come from the compiled HLO: a fusion holding a dot or convolution is a
matmul; otherwise the JAX name stack in its metadata (the Flax module path, `optax` /
`adamw` for the update) and its opcodes decide. torch's come from the aten op names.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CATEGORIES = ("matmul", "vocabulary projection", "layer norm", "softmax / attention", "GELU",
              "embedding gather", "optimizer update", "copies / transposes",
              "other elementwise")
_MOVES = {"copy", "transpose", "bitcast", "concatenate", "slice", "dynamic-slice",
          "dynamic-update-slice", "pad", "reshape", "broadcast", "copy-start", "copy-done",
          "tuple", "get-tuple-element", "parameter", "constant", "iota", "reverse"}


# --- XLA: categories from the compiled HLO ----------------------------------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def parse_hlo(text):
  """{instruction name: (opcode, called computation or None, op_name, shape text)} and
  {computation name: set of opcodes in it} from HLO text."""
  instructions, computations, current = {}, collections.defaultdict(set), None
  for line in text.splitlines():
    head = _COMPUTATION.match(line)
    if head and "=" not in line.split("{")[0]:
      current = head.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, rest = match.groups()
    calls = re.search(r"calls=%?([\w.\-]+)", rest)
    op_name = re.search(r'op_name="([^"]*)"', rest)
    instructions[name] = (opcode, calls.group(1) if calls else None,
                          op_name.group(1) if op_name else "", shape)
    if current:
      computations[current].add(opcode)
  return instructions, computations


def xla_category(instruction, computations, vocab_size):
  """One of CATEGORIES for an executed HLO instruction (opcode, calls, op_name, shape)."""
  opcode, calls, op_name, shape = instruction
  ops = set(computations.get(calls, ())) or {opcode}
  name = op_name.lower()
  vocab = re.search(rf"\b{vocab_size}\b", shape) is not None
  if "adam" in name or "optax" in name or "apply_updates" in name:
    return "optimizer update"
  if ops & {"dot", "convolution"}:
    return "vocabulary projection" if vocab else "matmul"
  if vocab or "log_softmax" in name or "caption_loss" in name:
    return "vocabulary projection"
  if ops & {"gather", "scatter"}:
    return "embedding gather"
  if "norm" in name or "/ln" in name:
    return "layer norm"
  if "softmax" in name or "attention" in name or ("attn" in name and "exponential" in ops):
    return "softmax / attention"
  if "gelu" in name or "erf" in name or ops & {"erf"}:
    return "GELU"
  if ops <= _MOVES:
    return "copies / transposes"
  return "other elementwise"


def _exclusive_ms(intervals):
  """{name: ms} for (start_us, end_us, name) intervals that may overlap (XLA runs independent
  operations concurrently): each stretch of time is shared equally by the operations running
  in it, so the shares add up to the busy wall time, not more."""
  bounds = sorted({t for start, end, _ in intervals for t in (start, end)})
  index = {t: i for i, t in enumerate(bounds)}
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  for start, end, name in intervals:
    starts[index[start]].append(name)
    ends[index[end]].append(name)
  active, shares = collections.Counter(), collections.Counter()
  for i, t in enumerate(bounds[:-1]):
    for name in ends[i]:
      active[name] -= 1
    for name in starts[i]:
      active[name] += 1
    running = [(name, n) for name, n in active.items() if n > 0]
    count = sum(n for _, n in running)
    for name, n in running:
      shares[name] += (bounds[i + 1] - t) / 1e3 * n / count
  return shares


def profile_xla(pair, steps, trace_dir):
  """{category: ms per step} and {hlo op: ms per step} over `steps` traced steps, scaled to
  the untraced step (see below); also the untraced step time (median of `steps`)."""
  import jax  # pylint: disable=g-import-not-at-top
  compiled = pair["compiled"]
  instructions, computations = parse_hlo(compiled.as_text())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    pair["jax_step"]()
    times.append((time.perf_counter() - t0) * 1e3)
  untraced_ms = sorted(times)[len(times) // 2]
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    t0 = time.perf_counter()
    for _ in range(steps):
      pair["jax_step"]()
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  ops = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)), e["args"]["hlo_op"])
         for e in events if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {})]
  # Tracing slows the step (bench-small at one pinned CPU: 2.9 s untraced, 6.0 s traced, the
  # profiler's threads sharing the CPU): every op is scaled by untraced / traced, so that the
  # ops add up to the untraced step. Shares are the information; absolute ms approximate.
  scale = untraced_ms / wall_ms
  ops = [(start, start + (end - start) * scale, name) for start, end, name in ops]
  if os.environ.get("PROFILE_STEP_DEBUG"):
    span = (max(e for _, e, _ in ops) - min(s for s, _, _ in ops)) / 1e3 / steps
    print(f"untraced {untraced_ms:.0f} ms/step; traced {wall_ms:.0f}; op span {span:.0f}; "
          f"{len(ops) / steps:.0f} ops/step; threads {len({e.get('tid') for e in events})}")
  per_op = collections.Counter({op: ms / steps for op, ms in _exclusive_ms(ops).items()})
  per_category = collections.Counter()
  vocab = pair["cfg"].text.vocab_size
  for op, ms in per_op.items():
    instruction = instructions.get(op, (op.split(".")[0], None, "", ""))
    category = xla_category(instruction, computations, vocab)
    per_category[category] += ms
    if os.environ.get("PROFILE_STEP_DEBUG") and ms > float(os.environ["PROFILE_STEP_DEBUG"]):
      print(f"{ms:8.1f} {category:22s} {op:35s} {instruction[0]:10s} "
            f"{sorted(computations.get(instruction[1], ()))} {instruction[2][-150:]}")
  return per_category, per_op, untraced_ms


# --- torch: categories from aten op names -----------------------------------------------

_TORCH_MOVES = {"contiguous", "clone", "transpose", "permute", "cat", "view", "reshape",
                "expand", "slice", "select", "to", "t", "unsqueeze", "squeeze", "split",
                "chunk", "narrow", "as_strided", "unbind", "stack", "flatten", "fill_",
                "zero_", "zeros", "empty", "empty_like", "new_zeros", "ones_like",
                "zeros_like", "detach", "alias", "index", "repeat", "roll", "pad",
                "constant_pad_nd", "unflatten", "_unsafe_view", "contiguous_", "resize_"}

def torch_category(name, shapes, vocab_size):
  """One of CATEGORIES for an aten op and its input shapes."""
  name = name.lower()
  vocab = any(vocab_size in s for s in shapes if isinstance(s, (list, tuple)))
  if "adam" in name or "_foreach" in name or "addcdiv" in name or "lerp" in name:
    return "optimizer update"
  if any(k in name for k in ("::mm", "addmm", "bmm", "matmul", "::linear", "baddbmm",
                             "conv", "::dot")):
    return "vocabulary projection" if vocab else "matmul"
  if vocab or "log_softmax" in name or "nll_loss" in name or "cross_entropy" in name:
    return "vocabulary projection"
  if "embedding" in name or "index_select" in name or "gather" in name:
    return "embedding gather"
  if "layer_norm" in name:
    return "layer norm"
  if "softmax" in name or "attention" in name:
    return "softmax / attention"
  if "gelu" in name:
    return "GELU"
  short = name.split("::")[-1]
  if "copy" in short or short in _TORCH_MOVES:
    return "copies / transposes"
  return "other elementwise"


def profile_torch(pair, steps):
  """{category: ms per step}, {aten op: ms per step} (self CPU time) over `steps` profiled
  steps, and the unprofiled step time (median of `steps`)."""
  import torch  # pylint: disable=g-import-not-at-top
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    pair["torch_step"]()
    times.append((time.perf_counter() - t0) * 1e3)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                              record_shapes=True) as prof:
    for _ in range(steps):
      pair["torch_step"]()
  per_op, per_category = collections.Counter(), collections.Counter()
  vocab = pair["cfg"].text.vocab_size
  for row in prof.key_averages(group_by_input_shape=True):
    ms = row.self_cpu_time_total / 1e3 / steps
    per_op[row.key] += ms
    per_category[torch_category(row.key, row.input_shapes or [], vocab)] += ms
  return per_category, per_op, sorted(times)[len(times) // 2]


def table(xla, torch_, untraced):
  """A Markdown table: one row per category, both sides' ms per step and their difference;
  then the sums and the steps timed without a profiler, (coca_jax, open_clip) ms."""
  rows = ["| category | coca_jax ms/step | open_clip ms/step | difference (ms) |",
          "|---|---|---|---|"]
  for name in sorted(CATEGORIES, key=lambda c: -(xla.get(c, 0) - torch_.get(c, 0))):
    a, b = xla.get(name, 0.0), torch_.get(name, 0.0)
    rows.append(f"| {name} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
  a, b = sum(xla.values()), sum(torch_.values())
  rows.append(f"| **sum of the ops** | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
  a, b = untraced
  rows.append(f"| step timed without profiler | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
  return "\n".join(rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/bench_small.py")
  parser.add_argument("--threads", default="1", help="'1' (one pinned CPU) or 'all'")
  parser.add_argument("--batch", type=int, default=0, help="0: vs_open_clip.py's default")
  parser.add_argument("--steps", type=int, default=3, help="profiled steps per side")
  parser.add_argument("--top", type=int, default=12, help="largest single ops listed")
  args = parser.parse_args()
  if args.threads == "1" and "intra_op_parallelism_threads" not in os.environ.get("XLA_FLAGS",
                                                                                  ""):
    from vs_open_clip import SINGLE_THREAD_XLA_FLAGS  # pylint: disable=g-import-not-at-top
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                               + SINGLE_THREAD_XLA_FLAGS).strip()
  from vs_open_clip import pin_threads, side_by_side  # pylint: disable=g-import-not-at-top
  pin_threads(args.threads)
  import torch  # pylint: disable=g-import-not-at-top
  import common  # pylint: disable=g-import-not-at-top
  pair = side_by_side(args.config, args.batch)
  for _ in range(2):  # warm both sides up
    pair["jax_step"]()
    pair["torch_step"]()
  with tempfile.TemporaryDirectory() as trace_dir:
    xla, xla_ops, xla_ms = profile_xla(pair, args.steps, trace_dir)
  torch_, torch_ops, torch_ms = profile_torch(pair, args.steps)
  base = common.header(benchmark="profile_step", config=args.config, batch=pair["batch"],
                       threads=args.threads, torch_threads=torch.get_num_threads(),
                       torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                       xla_flags=os.environ.get("XLA_FLAGS", ""), steps=args.steps)
  for impl, per_category, per_op, step_ms in (("coca_jax", xla, xla_ops, xla_ms),
                                              ("open_clip", torch_, torch_ops, torch_ms)):
    print(json.dumps({**base, "impl": impl, "untraced_ms_per_step": round(step_ms, 1),
                      "ms_per_step": round(sum(per_category.values()), 1),
                      "categories_ms": {k: round(v, 2) for k, v in per_category.items()},
                      "top_ops_ms": {k: round(v, 2) for k, v in per_op.most_common(args.top)}}),
          flush=True)
  print(table(xla, torch_, (xla_ms, torch_ms)))


if __name__ == "__main__":
  main()
