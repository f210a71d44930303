"""The train step compiles ahead of time for a TPU topology on this CPU-only machine (libtpu as
a compiler only; JAX_PLATFORMS=cpu keeps it from becoming a backend)."""
import importlib.util
import pathlib
import types

import jax
import pytest

from coca_jax import aot

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"

needs_libtpu = pytest.mark.skipif(
    not aot.libtpu_available(),
    reason="libtpu is not installed: compiling for a TPU topology needs the `tpu` extra "
           "(pip install -e \".[tpu]\")")


def _tiny_config():
  spec = importlib.util.spec_from_file_location("tiny", CONFIGS / "tiny.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@needs_libtpu
def test_tiny_train_step_compiles_for_tpu_v4():
  config = _tiny_config()
  result = aot.compile_for_topology(config, "v4:2x2x2", mesh="data:2,fsdp:4")
  # libtpu only compiled: the process still computes on the CPU.
  assert jax.default_backend() == "cpu"
  assert result["chips"] == 8 and result["device_kind"] == "TPU v4"
  assert result["mesh"] == {"slice": 1, "data": 2, "fsdp": 4, "tensor": 1}

  # Per-chip memory: the chip's shard of the train state goes in and comes back (donated, so
  # aliased), and the step needs some room of its own; all far below a v4's 32 GiB.
  state_bytes = result["state_gib_total"] * 2 ** 30
  assert result["argument_bytes"] >= state_bytes / 8
  assert result["argument_bytes"] <= state_bytes
  assert 0 < result["alias_bytes"] <= result["output_bytes"]
  assert result["temp_bytes"] >= 0
  total = (result["argument_bytes"] + result["output_bytes"] + result["temp_bytes"]
           - result["alias_bytes"])
  assert result["bytes_per_chip"] == total
  assert 0 < total < 2 ** 30
  assert result["fits"] and result["hbm_gib"] == 32

  # XLA's count of the step's FLOPs per chip is close to the per-tower count (tiny's layers
  # are not scanned, so no loop body is counted only once).
  assert result["xla_flops_per_chip"] > 0
  assert 0.8 < result["xla_over_model_flops"] < 1.5


@needs_libtpu
def test_mesh_choice():
  def widths(width):
    return types.SimpleNamespace(vision=types.SimpleNamespace(width=width),
                                 text=types.SimpleNamespace(width=width), embed_dim=width)

  pod = aot.topology_devices("v4:16x16x8")  # the paper's 2,048 chips, a 16x16x8 torus
  mesh = lambda width: (lambda m: (m["data"], m["fsdp"]))(aot.auto_mesh(widths(width), pod))
  assert mesh(768) == (8, 256)  # coca_base: 768 = 3 x 256
  assert mesh(1408) == (16, 128)  # coca_2b: 1,408 = 11 x 128
  # coca_large: 1,024 divides 1,024 but no set of whole torus axes makes 1,024 chips.
  assert mesh(1024) == (8, 256)
  assert aot.parse_mesh("data:16,fsdp:128")["fsdp"] == 128
  with pytest.raises(ValueError, match="axis:size"):
    aot.parse_mesh("model:4")
  with pytest.raises(ValueError, match="generation"):
    aot.chip_spec("v3:4x4")
