"""The compiled CoCa train step, built one way for training (`pretrain.py`) and for ahead-of-time
compilation (`coca_jax.tools.aot`), so that both lower the same program: `init_from` models,
`freeze`, the loss weights, distillation, gradient accumulation and the datasets' caption
weights included.
"""
import dataclasses
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from coca_jax import data
from coca_jax.model import create_model
from coca_jax.parallel import sharding
from coca_jax.train import freeze, optim
from coca_jax.train import step as step_lib
from coca_jax.train.state import StateLayout, state_layout


@dataclasses.dataclass(frozen=True)
class StepProgram:
  """What decides the compiled train step.

  layout: the state as checkpoints hold it (`state.StateLayout`); schedule: step -> learning
  rate; distill_weight: the distillation loss weight (0: no reference argument). The jitted
  step `jitted(state, batch, frozen, reference)` takes the `TrainState` (donated), the global
  batch, the frozen params and, with `distill_weight` > 0, the reference params (neither
  donated); `abstract_args` are those four as ShapeDtypeStructs with their shardings.
  """
  layout: StateLayout
  schedule: Any
  distill_weight: float
  jitted: Any
  abstract_args: Tuple[Any, ...]

  def lower(self):
    """The step lowered for the abstract inputs; call under the mesh and logical rules."""
    return self.jitted.lower(*self.abstract_args)


def freeze_prefixes(config) -> Tuple[str, ...]:
  """config.freeze with the named groups ("contrastive_only", "embedding_path") expanded for
  this model: param path prefixes such as "visual" or "text/ln_final"."""
  prefixes = []
  for name in config.get("freeze", ()) or ():
    if name == "contrastive_only":
      prefixes += freeze.contrastive_only(create_model(config.model).cfg)
    elif name == "embedding_path":
      prefixes += freeze.embedding_path()
    else:
      prefixes.append(name)
  return tuple(prefixes)


def dataset_caption_weights_from_step(config) -> int:
  """The first step at which the datasets' caption weights apply:
  round(config.loss.dataset_caption_weights_from * num_train_steps), 0 when unset. ValueError
  when the fraction is outside [0, 1]."""
  fraction = float(config.loss.get("dataset_caption_weights_from", 0.0) or 0.0)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError("config.loss.dataset_caption_weights_from is a fraction of "
                     f"num_train_steps in [0, 1], got {fraction}")
  return round(fraction * config.num_train_steps)


def distill_weight(config) -> float:
  """config.loss.distill_weight, 0.0 when unset."""
  return float(config.loss.get("distill_weight", 0.0) or 0.0)


def batch_shapes(config, size: int) -> Dict[str, Tuple[Tuple[int, ...], Any]]:
  """{field: (shape, dtype)} of a global batch: "images" (B, S, S, 3) float32, "text" (B, L)
  int32 and, when some dataset weighs its caption loss, "caption_weight" (B,) float32."""
  batch, length = config.global_batch_size, config.data.text_length
  shapes = {"images": ((batch, size, size, 3), jnp.float32), "text": ((batch, length), jnp.int32),
            "caption_weight": ((batch,), jnp.float32)}
  return {k: shapes[k] for k in data.batch_fields(config.data)}


def step_program(config, model, mesh, rules) -> StepProgram:
  """The optimizer, state layout and jitted train step of a (resolved) config on a mesh.
  Nothing is allocated (shapes only)."""
  cfg = model.cfg
  size, length = cfg.vision.image_size, config.data.text_length
  example = (jnp.zeros((1, size, size, 3)), jnp.zeros((1, length), jnp.int32))
  init_params = lambda rng: model.init(rng, *example)["params"]  # noqa: E731
  prefixes = freeze_prefixes(config)
  abstract_params = nn.unbox(jax.eval_shape(init_params, jax.random.key(0)))
  tx = optim.create_optimizer(config.optimizer, config.num_train_steps,
                              freeze.split(abstract_params, prefixes)[0])
  schedule = optim.schedule(config.optimizer, config.num_train_steps)
  layout = state_layout(init_params, tx, prefixes, mesh, rules)
  weight = distill_weight(config)

  # The step's arguments: the state (trainable params), the batch, the frozen params and the
  # distillation reference (every param; only with a distillation weight).
  state_shardings, frozen_shardings = layout.split(layout.shardings)
  abstract_state, abstract_frozen = layout.split(layout.abstract)
  reference_shardings = layout.shardings["params"] if weight else None
  abstract_reference = layout.abstract["params"] if weight else None
  shapes = batch_shapes(config, size)
  batch_shardings = {k: sharding.batch_sharding(mesh, len(shape), rules)
                     for k, (shape, _) in shapes.items()}
  abstract_batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_shardings[k])
                    for k, (shape, dtype) in shapes.items()}

  step_fn = step_lib.make_train_step(
      model, tx, schedule, pad_id=cfg.text.pad_id,
      contrastive_weight=config.loss.contrastive_weight,
      caption_weight=config.loss.caption_weight, distill_weight=weight,
      dataset_caption_weights_from_step=dataset_caption_weights_from_step(config),
      accum_steps=config.grad_accum_steps, seed=config.seed)
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, frozen_shardings,
                                          reference_shardings),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))
  return StepProgram(layout, schedule, weight, jitted,
                     (abstract_state, abstract_batch, abstract_frozen, abstract_reference))
