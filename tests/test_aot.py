"""The train step compiles ahead of time for a TPU topology on this CPU-only machine (libtpu as
a compiler only; JAX_PLATFORMS=cpu keeps it from becoming a backend)."""
import importlib.util
import os
import pathlib
import subprocess
import sys
import types

import jax
import pytest

from coca_jax.tools import aot

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


def test_aot_lowers_the_program_training_runs(tmp_path):
  """aot.lower_train_step builds the step the trainer runs (program.step_program): the same
  lowered text, shardings included, for configs/tiny.py and for the caption fine-tune with a
  tiny export as init_from, where frozen params and the distillation reference are separate,
  non-donated arguments; leaving out the freeze or the reference gives another program."""
  # pylint: disable=import-outside-toplevel
  import flax.linen as nn
  from coca_jax.parallel import sharding
  from coca_jax.train import program as program_lib
  from coca_jax.train import config as train_config
  from coca_jax.model import create_model
  from train_fixtures import random_micro_export
  # pylint: enable=import-outside-toplevel
  export = str(random_micro_export(tmp_path / "export"))

  def caption_finetune(variant):
    spec = importlib.util.spec_from_file_location("ft", CONFIGS / "caption_finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    config.init_from, config.global_batch_size = export, 8
    return config

  def trainer_text(config):  # as the trainer builds and lowers it
    config = train_config.resolve(config)
    mesh = sharding.config_mesh(config)
    rules = sharding.config_rules(config)
    model = create_model(config.model, deterministic=True)
    program = program_lib.step_program(config, model, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return program, program.lower().as_text()

  texts = {}
  for name, config in (("tiny", _tiny_config()), ("distill", caption_finetune("distill")),
                       ("plain", caption_finetune(None))):
    lowered, info = aot.lower_train_step(config, jax.devices())  # the config's mesh
    program, text = trainer_text(config)
    assert lowered.as_text() == text, name
    texts[name] = text
    if name == "distill":
      _, _, frozen, reference = program.abstract_args
      assert set(frozen) >= {"logit_scale", "pooling"} and reference is not None
      assert info["params"] == sum(x.size for x in jax.tree.leaves(reference))
  assert texts["distill"] != texts["plain"]


@needs_libtpu
def test_topology_compiles_stay_out_of_the_persistent_cache(tmp_path):
  """An executable compiled for compile-only TPU devices cannot be loaded from JAX's persistent
  cache without a TPU client (the next run warned and compiled again): none is written, while
  the process's CPU programs still are (so the cache was in use)."""
  micro = CONFIGS.parent / "tests" / "configs" / "micro_train.py"
  code = (
      "import importlib.util, sys\n"
      "from coca_jax.tools import aot\n"
      "spec = importlib.util.spec_from_file_location('micro', sys.argv[1])\n"
      "module = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(module)\n"
      "assert aot.compile_for_topology(module.get_config(), 'v4:2x2x1')['fits']\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "-c", code, str(micro)], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  entries = os.listdir(tmp_path)
  assert entries, "the persistent cache was not used"
  assert not [e for e in entries if e.startswith("jit_train_step")], entries
