"""The optimizer: AdamW or the paper's Adafactor, a warmup + decay schedule, gradient clipping,
and weight decay on weight matrices only.

`config.optimizer` fields:
  name            "adamw" | "adafactor"
  learning_rate   peak learning rate
  warmup_fraction linear warmup over this fraction of the steps (or `warmup_steps` if > 0)
  decay           "linear" | "cosine" | "constant", from the peak to `end_learning_rate`
  b1, b2, eps     moment decay rates; eps (AdamW only)
  weight_decay    decoupled weight decay λ
  grad_clip_norm  global-norm gradient clipping (0: none)
  min_dim_size_to_factor   Adafactor: matrices whose second-largest side is smaller keep a full
                  second moment
  layer_decay     layer-wise learning-rate decay of the image encoder (1.0: none): its layer i
                  (1-based, of L) learns at decay^(L + 1 - i) times the rate, its patch and
                  position embeddings at decay^(L + 1), everything after it at the full rate

The Adafactor of the paper (β1 = 0.9, constant β2 = 0.999, decoupled weight decay) is not
optax's `adafactor` default, which uses β2_t = 1 - t^-0.8, multiplies updates by the parameter's
scale, clips updates, and has no momentum. Here, for gradient g_t of a weight W (r x c):
  R_t = β̂2_t R_{t-1} + (1 - β̂2_t) rowmean(g_t² + 1e-30)   (factored second moment;
  C_t = β̂2_t C_{t-1} + (1 - β̂2_t) colmean(g_t² + 1e-30)    vectors and small dims unfactored)
  v̂_t = R_t C_tᵀ / mean(R_t),   u_t = g_t / sqrt(v̂_t)
  β̂2_t = β2 (1 - β2^(t-1)) / (1 - β2^t)   (a constant β2 with Adam's bias correction)
  m_t = β1 m_{t-1} + (1 - β1) u_t,   m̂_t = m_t / (1 - β1^t)
  W_t = W_{t-1} - η_t (m̂_t + λ W_{t-1})
with η_t the schedule (warmup, then decay). Weight decay is decoupled from the gradient
statistics and scales with the schedule: the decay applied at step t is η_t·λ. AdamW follows
the same last line with Adam's m̂_t / (sqrt(v̂_t) + eps).

No weight decay on biases, norms, embeddings (token, position), the CLS and class tokens, the
poolers' queries or the temperature: only leaves named `kernel` or `proj` decay.
"""
from typing import Any

import jax
import jax.numpy as jnp
import optax

DECAYED_LEAF_NAMES = ("kernel", "proj")


def weight_decay_mask(params) -> Any:
  """True for the weight matrices that decay, False for everything else."""
  def decays(path, _):
    return getattr(path[-1], "key", None) in DECAYED_LEAF_NAMES
  return jax.tree_util.tree_map_with_path(decays, params)


def schedule(opt_config, num_steps: int) -> optax.Schedule:
  """Linear warmup to the peak, then linear / cosine decay (or constant) to the end value."""
  peak = opt_config.learning_rate
  end = opt_config.get("end_learning_rate", 0.0)
  warmup = opt_config.get("warmup_steps", 0) or int(round(opt_config.warmup_fraction * num_steps))
  warmup = min(max(warmup, 0), num_steps)
  rest = max(num_steps - warmup, 1)
  decay = opt_config.get("decay", "linear")
  if decay == "linear":
    after = optax.linear_schedule(peak, end, rest)
  elif decay == "cosine":
    after = optax.cosine_decay_schedule(peak, rest, alpha=end / peak if peak else 0.0)
  elif decay == "constant":
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config.optimizer.decay: {decay!r} is not linear, cosine or constant")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _debiased_constant_decay(b2: float):
  """optax's decay_rate_fn for a constant β2 with Adam-style bias correction."""
  def rate(i, _):
    t = jnp.asarray(i + 1, jnp.float32)
    return b2 * (1 - b2 ** (t - 1)) / (1 - b2 ** t)
  return rate


def paper_adafactor(learning_rate, b1=0.9, b2=0.999, weight_decay=0.01, mask=None,
                    min_dim_size_to_factor=128) -> optax.GradientTransformation:
  """Adafactor as the CoCa paper uses it (formula in this module's docstring).
  `learning_rate`: a float or a step -> rate schedule; `mask`: a pytree of () bool leaves, one
  per param, True where weight decay applies (None: everywhere)."""
  return optax.chain(
      optax.scale_by_factored_rms(factored=True, decay_rate=b2, step_offset=0,
                                  min_dim_size_to_factor=min_dim_size_to_factor,
                                  epsilon=1e-30, decay_rate_fn=_debiased_constant_decay(b2)),
      optax.ema(b1, debias=True),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def layer_scales(params, decay: float):
  """Per-leaf learning-rate factors for layer-wise decay of the image encoder ("visual").

  Unrolled layers (`layers_{i}`) get one factor each; scanned layers (`layers`, a leading layer
  axis) get a (L, 1, ...) array that broadcasts along that axis.
  """
  visual = params.get("visual", {}) if hasattr(params, "get") else {}
  depth = sum(1 for k in visual if k.startswith("layers_"))
  if "layers" in visual:
    depth = jax.tree.leaves(visual["layers"])[0].shape[0]

  def scale(path, leaf):
    keys = [getattr(k, "key", None) for k in path]
    if keys[0] != "visual":
      return jnp.ones((), jnp.float32)
    if len(keys) > 1 and keys[1] == "layers":
      layer = jnp.arange(1, depth + 1, dtype=jnp.float32)
      return (decay ** (depth + 1 - layer)).reshape((depth,) + (1,) * (leaf.ndim - 1))
    if len(keys) > 1 and keys[1].startswith("layers_"):
      return jnp.asarray(decay ** (depth - int(keys[1].split("_")[1])), jnp.float32)
    return jnp.asarray(decay ** (depth + 1), jnp.float32)  # embeddings, before the layers

  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer(params, decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its layer's factor (`layer_scales`); no state."""
  def update(updates, state, params=None):
    del params
    scales = layer_scales(updates, decay)
    return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state
  del params
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def create_optimizer(opt_config, num_steps: int, params) -> optax.GradientTransformation:
  """The optimizer `opt_config.name` names ("adamw", or "adafactor": `paper_adafactor`),
  with `schedule`'s learning rate over `num_steps`, weight decay only on the weight matrices
  `weight_decay_mask(params)` marks, optional layer-wise decay (`layer_decay` < 1) and
  global-norm gradient clipping first when grad_clip_norm > 0. `params` may be abstract.
  Raises ValueError for an unknown name or a layer_decay outside (0, 1]."""
  lr = schedule(opt_config, num_steps)
  mask = weight_decay_mask(params)
  name = opt_config.name
  if name == "adamw":
    tx = optax.adamw(lr, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.get("eps", 1e-8),
                     weight_decay=opt_config.weight_decay, mask=mask)
  elif name == "adafactor":
    tx = paper_adafactor(lr, b1=opt_config.b1, b2=opt_config.b2,
                         weight_decay=opt_config.weight_decay, mask=mask,
                         min_dim_size_to_factor=opt_config.get("min_dim_size_to_factor", 128))
  else:
    raise ValueError(f"config.optimizer.name: {name!r} is not adamw or adafactor")
  layer_decay = opt_config.get("layer_decay", 1.0)
  if not 0.0 < layer_decay <= 1.0:
    raise ValueError(f"config.optimizer.layer_decay: {layer_decay} is not in (0, 1]")
  if layer_decay != 1.0:
    # After the optimizer, so that weight decay (η_t·λ·W) slows down with the layer too.
    tx = optax.chain(tx, scale_by_layer(params, layer_decay))
  clip = opt_config.get("grad_clip_norm", 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx
