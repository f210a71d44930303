"""The accelerator benchmark script (benchmarks/gpu_run.sh) on configs/tiny.py, on CPU, as the
GPU host would run it: tensorflow, tensorflow-datasets, clu, ml_collections, grain and torch
cannot be imported (that host lacks them). Speed itself is never asserted, only that every
measurement comes out."""
import json
import os
import subprocess
import sys

import pytest

from train_fixtures import MICRO_TRAIN, ROOT

BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections", "grain", "torch",
           "open_clip")
SITECUSTOMIZE = f"""
import sys
BLOCKED = {BLOCKED!r}

class _Blocker:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not on the GPU host)")
    return None

sys.meta_path.insert(0, _Blocker())
"""


def read_lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("gpu_run")
  (tmp / "site").mkdir()
  (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
  # The micro training config: the script's every step, at the smallest compile.
  env = dict(os.environ, GPU_RUN_SMOKE="1", GPU_RUN_CONFIG=str(MICRO_TRAIN),
             JAX_PLATFORMS="cpu", PYTHON=sys.executable,
             PYTHONPATH=os.pathsep.join([str(tmp / "site"), os.environ.get("PYTHONPATH", "")]),
             JAX_COMPILATION_CACHE_DIR=os.environ.get(
                 "JAX_COMPILATION_CACHE_DIR", os.path.expanduser("~/.cache/coca_jax/xla")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  env.pop("XLA_FLAGS", None)
  out = tmp / "out"
  result = subprocess.run(["bash", "benchmarks/gpu_run.sh", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return out, result


def test_blocked_modules_stay_out(tmp_path):
  (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
  env = dict(os.environ, PYTHONPATH=str(tmp_path))
  result = subprocess.run([sys.executable, "-c", "import ml_collections"], env=env,
                          capture_output=True, text=True)
  assert "blocked" in result.stderr


def test_train_step_lines(gpu_run):
  out, result = gpu_run
  lines = read_lines(out / "train_step.jsonl")
  assert [(l["batch"], l["remat"]) for l in lines] == [(2, "full"), (2, "none")], (
      result.stdout[-3000:] + result.stderr[-3000:])
  for line in lines:
    assert "error" not in line, line
    assert line["median_ms"] > 0 and line["mfu_vs_1tflops"] > 0
    assert line["config_loader"].startswith("stand-in")
    assert line["model_gflops_per_step"] > 0 and "load_avg_1m" in line
    assert line["cpu_model"] and isinstance(line["cpu_vector_extensions"], list)
  assert lines[0]["caption_loss_chunks"] == 2 and lines[1]["attention_impl"] == "xla"


def test_captioning_lines(gpu_run):
  out, _ = gpu_run
  lines = read_lines(out / "captioning.jsonl")
  assert sorted(l["strategy"] for l in lines) == ["beam", "greedy"]
  for line in lines:
    assert line["generated_tokens_per_s"] > 0 and line["captions_per_s"] > 0
    assert line["tokens_per_caption"] == 7  # every caption runs to max_len (start included)


def test_encode_lines(gpu_run):
  out, _ = gpu_run
  lines = read_lines(out / "encode.jsonl")
  assert sorted(l["benchmark"] for l in lines) == ["encode_image", "encode_text"]
  assert all(l["examples_per_s"] > 0 for l in lines)


def test_decode_step_lines(gpu_run):
  out, _ = gpu_run
  (line,) = read_lines(out / "decode_step.jsonl")
  # Timings are only reported (a difference of two tiny timings may even come out negative);
  # the sizes are exact.
  assert {"ms_per_step", "gb_per_s_read", "fraction_of_probe"} <= set(line)
  assert line["text_weights_mb"] > 0 and line["cross_kv_mb"] > 0 and line["probe_gb_per_s"] > 0


def _benchmark_module(name):
  """benchmarks/<name>.py as a module (the folder is not a package)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cpu_info_names_the_model_extensions_and_isa_cap(tmp_path, monkeypatch):
  """Benchmark lines say which CPU and which vector extensions a figure was measured with."""
  common = _benchmark_module("common")
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"
                     "flags\t\t: fpu sse2 avx2 fma avx512f\n\nprocessor\t: 1\n")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 "
                     "--xla_cpu_max_isa=AVX2")
  info = common.cpu_info(str(cpuinfo))
  assert info == {"cpu_model": "AMD EPYC 7B13", "cpu_vector_extensions": ["avx2", "fma",
                                                                          "avx512f"],
                  "xla_cpu_max_isa": "AVX2"}
  monkeypatch.delenv("XLA_FLAGS")
  assert "xla_cpu_max_isa" not in common.cpu_info(str(tmp_path / "absent"))


def test_alternating_sides_rewarm_before_each_block_and_swap_order():
  """Each side's timed calls come in blocks after its untimed ones, the first side of a round
  flips, and every side gets exactly the timed count (a short last block)."""
  common = _benchmark_module("common")
  calls = []
  steps = {side: (lambda side=side: calls.append(side)) for side in ("a", "b")}
  times = common.alternating_seconds(steps, timed=3, block=2, rewarm=1)
  assert {side: len(ts) for side, ts in times.items()} == {"a": 3, "b": 3}
  # round 1: a (1 untimed + 2 timed), b (1 + 2); round 2 flips: b (1 + 1), a (1 + 1)
  assert "".join(calls) == "aaabbbbbaa"
  calls.clear()
  common.alternating_seconds(steps, timed=2, block=1, rewarm=0)
  assert "".join(calls) == "abba"
  with pytest.raises(ValueError, match="block >= 1"):
    common.alternating_seconds(steps, timed=2, block=0)


def test_profile_shares_overlapping_time_and_names_categories():
  """Ops that run at the same time share it (the shares add up to the busy wall time, never
  more); HLO and aten ops land in the category a reader expects."""
  profile = _benchmark_module("profile_step")
  shares = profile._exclusive_ms([(0, 4000, "a"), (2000, 6000, "b"), (8000, 9000, "c")])  # pylint: disable=protected-access
  assert shares == {"a": 3.0, "b": 3.0, "c": 1.0}
  hlo = """
%fused_gelu (p: f32[8,64]) -> f32[8,64] {
  %p = f32[8,64]{1,0} parameter(0)
  ROOT %e = f32[8,64]{1,0} erf(%p)
}
%fused_dot (p: f32[8,32], q: f32[32,64]) -> f32[8,64] {
  %p = f32[8,32]{1,0} parameter(0)
  %q = f32[32,64]{1,0} parameter(1)
  ROOT %d = f32[8,64]{1,0} dot(%p, %q), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
ENTRY %main (a: f32[8,32], w: f32[32,64], v: f32[64,8192]) -> f32[8,64] {
  %f1 = f32[8,64]{1,0} fusion(%a, %w), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(step)/CoCa.encode_image/visual/mlp/fc1/dot_general"}
  %f2 = f32[8,64]{1,0} fusion(%f1), kind=kLoop, calls=%fused_gelu, metadata={op_name="jit(step)/CoCa.encode_image/visual/mlp/erfc"}
  %t = f32[64,8]{1,0} transpose(%f2), dimensions={1,0}
  ROOT %v = f32[8,8192]{1,0} dot(%f2, %v), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""
  instructions, computations = profile.parse_hlo(hlo)
  categories = {name: profile.xla_category(instructions[name], computations, 8192)
                for name in ("f1", "f2", "t", "v")}
  assert categories == {"f1": "matmul", "f2": "GELU", "t": "copies / transposes",
                        "v": "vocabulary projection"}
  assert profile.torch_category("aten::addmm", [[32, 256], [256, 1024]], 8192) == "matmul"
  assert profile.torch_category("aten::mm", [[1024, 256], [256, 8192]], 8192) == (
      "vocabulary projection")
  assert profile.torch_category("aten::native_layer_norm", [], 8192) == "layer norm"
  assert profile.torch_category("aten::t", [], 8192) == "copies / transposes"
  assert profile.torch_category("aten::add_", [], 8192) == "other elementwise"


def test_before_after_times_a_revision_beside_the_work_tree():
  """HEAD against the work tree: two compiled steps in one process; the same model must start
  from the same loss (the exported package is really imported, under its own name)."""
  if not (ROOT / ".git").exists():
    pytest.skip("needs the git history")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "benchmarks/before_after.py", "--before=HEAD", f"--config={MICRO_TRAIN}",
       "--batch=2", "--steps=2", "--threads=all"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert line["benchmark"] == "train_step_before_after" and line["before_ms"] > 0
  assert abs(line["first_loss"]["before"] - line["first_loss"]["after"]) < 1e-3
  assert "cpu_vector_extensions" in line
