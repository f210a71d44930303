"""Per-chip memory of the benchmark training step (benchmarks/train_step.py: model, losses,
AdamW) compiled ahead of time for ONE TPU chip, on a machine without a TPU (libtpu as the
compiler only). Nothing is allocated or run: a quick way to see what a model or loss change
does to accelerator memory. One JSON line.

  python benchmarks/memory_tpu.py --config=configs/coca_base.py --batch=512 --remat_policy=full
  python benchmarks/memory_tpu.py --config=configs/coca_base.py --batch=512 \
      --remat_policy=full --model_overrides='{"caption_loss_chunks": 4}'
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu compiles; it is never started

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top
from train_step import make_train_step  # noqa: E402  pylint: disable=g-import-not-at-top

import coca_jax  # noqa: E402
from coca_jax.tools import aot  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch", type=int, required=True)
  parser.add_argument("--remat_policy", default=None)
  parser.add_argument("--model_overrides", default="", help="JSON merged into config.model")
  parser.add_argument("--topology", default="v5p:2x2x1", help="a one-host topology; one chip "
                      "of it is used")
  args = parser.parse_args()
  config, _ = common.load_config(args.config)
  model_config = common.model_dict(config)
  model_config["scan_layers"] = True
  if args.remat_policy:
    model_config["remat_policy"] = args.remat_policy
  model_config.update(json.loads(args.model_overrides or "{}"))
  model = coca_jax.create_model(model_config)
  cfg = model.cfg

  topology = topologies.get_topology_desc(
      platform="tpu", topology_name=args.topology, chip_config_name="megacore",
      chips_per_host_bounds=(2, 2, 1), num_slices=1)
  chip = NamedSharding(Mesh(topology.devices[:1], ("chip",)), PartitionSpec())
  shaped = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=chip), tree)
  size, length = cfg.vision.image_size, cfg.text.context_length
  init = lambda k: nn.unbox(model.init(k, jnp.zeros((1, size, size, 3)),
                                       jnp.zeros((1, length), jnp.int32)))["params"]
  params = jax.eval_shape(init, jax.random.key(0))
  tx = optax.adamw(1e-4, weight_decay=0.01)
  opt_state = jax.eval_shape(tx.init, params)
  images = jax.ShapeDtypeStruct((args.batch, size, size, 3), jnp.float32, sharding=chip)
  text = jax.ShapeDtypeStruct((args.batch, length), jnp.int32, sharding=chip)
  t0 = time.perf_counter()
  with aot.outside_persistent_cache():
    compiled = make_train_step(model, tx, cfg.text.pad_id).lower(
        shaped(params), shaped(opt_state), images, text).compile()
  memory = compiled.memory_analysis()
  gb = lambda n: round(n / 1e9, 2)
  print(json.dumps(common.header(
      benchmark="memory_tpu", config=args.config, topology=args.topology,
      chip=topology.devices[0].device_kind, batch=args.batch, dtype=cfg.dtype,
      remat=cfg.remat_policy, model_overrides=args.model_overrides,
      compile_s=round(time.perf_counter() - t0, 1),
      temp_gb=gb(memory.temp_size_in_bytes), argument_gb=gb(memory.argument_size_in_bytes),
      total_gb=gb(memory.argument_size_in_bytes + memory.output_size_in_bytes
                  + memory.temp_size_in_bytes - memory.alias_size_in_bytes))), flush=True)


if __name__ == "__main__":
  main()
