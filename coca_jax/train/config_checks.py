"""Refuses a training config that cannot work, before anything compiles, naming the field."""
import jax

from coca_jax.parallel import sharding
from coca_jax.data.config import resolve as resolve_data
from coca_jax.model.config import from_dict


def _fail(field: str, message: str):
  raise ValueError(f"config.{field}: {message}")


def check(config) -> None:
  """Raises ValueError naming the field ("config.mesh: ...") when the config cannot run:
  model shapes that do not divide, data lengths beyond the model's, a batch that does not
  split over the mesh and micro-batches, unknown optimizer or loss settings."""
  model = from_dict(config.model)  # names any bad model field itself
  data = resolve_data(config.get("data"))
  if data["text_length"] > model.text.context_length:
    _fail("data.text_length", f"{data['text_length']} tokens do not fit the model's position "
          f"table (model.text.context_length = {model.text.context_length})")
  if data["image_size"] != model.vision.image_size:
    _fail("data.image_size", f"{data['image_size']} differs from model.vision.image_size "
          f"{model.vision.image_size}")
  if config.num_train_steps <= 0:
    _fail("num_train_steps", "must be positive")
  mesh = dict(config.mesh)
  if mesh.get("fsdp") == 0:  # as large as the model's widths allow
    try:
      mesh = sharding.auto_fsdp(mesh, jax.devices(), sharding.fsdp_widths(model))
    except ValueError as e:
      _fail("mesh", str(e))
  sizes = [s for s in mesh.values() if s != -1]
  known = 1
  for s in sizes:
    if s <= 0:
      _fail("mesh", f"axis sizes must be positive or -1, got {mesh}")
    known *= s
  devices = jax.device_count()
  if known > devices or devices % known:
    _fail("mesh", f"{mesh} needs {known} devices (times the -1 axis), but there are {devices}")
  batch_axes = ("slice", "data", "fsdp")
  if list(mesh.values()).count(-1) > 1:
    _fail("mesh", "at most one axis may be -1")
  resolved = {a: (s if s != -1 else devices // known) for a, s in mesh.items()}
  data_parallel = 1
  for a in batch_axes:
    data_parallel *= resolved.get(a, 1)
  accum = config.grad_accum_steps
  if accum < 1 or config.global_batch_size % accum:
    _fail("grad_accum_steps", f"{accum} does not divide global_batch_size "
          f"{config.global_batch_size}")
  micro = config.global_batch_size // accum
  if micro % data_parallel:
    _fail("global_batch_size", f"{config.global_batch_size} (micro-batches of {micro}) is not "
          f"divisible by the {data_parallel} data-parallel devices of mesh {resolved}")
  if config.global_batch_size % jax.process_count():
    _fail("global_batch_size", f"{config.global_batch_size} is not divisible by the "
          f"{jax.process_count()} processes")
  if config.nonfinite not in ("error", "skip"):
    _fail("nonfinite", f"{config.nonfinite!r} is not 'error' or 'skip'")
  for name in ("checkpoint.every_steps", "log_every_steps"):
    section, _, field = name.rpartition(".")
    value = config[section][field] if section else config[field]
    if value <= 0:
      _fail(name, "must be positive")
