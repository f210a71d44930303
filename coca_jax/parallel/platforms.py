"""How a command starts: which JAX platforms (no TPU probe on a machine without TPU chips),
TensorFlow kept off the GPUs, progress lines without INFO logs, huge pages for XLA's host
buffers on a CPU (`start_command`).

With the `tpu` extra (libtpu, used here as an ahead-of-time compiler) installed on a machine
that has no TPU, JAX's start-up probe of the TPU backend prints libtpu errors ("could not
determine TPU accelerator type", "unexpected worker hostname") that the user can do nothing
about. `skip_absent_tpu()` leaves the TPU out when the machine has no TPU device files; an
explicit JAX_PLATFORMS is always respected.
"""
import glob
import importlib.metadata
import importlib.util
import os

from coca_jax.parallel import host_memory

# Device files through which libtpu reaches TPU chips (TPU VMs: /dev/accel*, v5e and later
# also /dev/vfio/*).
TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")
GPU_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
               "jax_rocm7_plugin")


def has_tpu_devices() -> bool:
  """Whether the machine has TPU device files (TPU_DEVICE_FILES)."""
  return any(glob.glob(pattern) for pattern in TPU_DEVICE_FILES)


def platforms_without_tpu() -> str:
  """"cuda,cpu" / "rocm,cpu" when a GPU plugin is installed, else "cpu"."""
  for plugin in GPU_PLUGINS:
    if importlib.util.find_spec(plugin) is not None:
      return ("rocm" if "rocm" in plugin else "cuda") + ",cpu"
  return "cpu"


def runs_on_cpu(environ=None) -> bool:
  """Whether JAX will compute on the CPU: JAX_PLATFORMS is "cpu", or it is unset on a machine
  without TPU chips or a GPU plugin. `environ`: default os.environ."""
  environ = os.environ if environ is None else environ
  if environ.get("JAX_PLATFORMS"):
    return environ["JAX_PLATFORMS"] == "cpu"
  return not has_tpu_devices() and platforms_without_tpu() == "cpu"


def skip_absent_tpu() -> None:
  """Call before JAX's first use of a device. Nothing when JAX_PLATFORMS is set, when libtpu is
  not installed, or when TPU chips are present."""
  if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
    return
  if has_tpu_devices():
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_platforms", platforms_without_tpu())


def hide_accelerators_from_tensorflow() -> None:
  """TensorFlow (under TFDS) must leave GPUs to JAX. The project pins tensorflow-cpu, which sees
  none; only a full `tensorflow` install is told. (Not done at import: once TensorFlow's runtime
  is up, importing triton, as open_clip's torch does, crashes the process.)"""
  try:
    importlib.metadata.version("tensorflow")
  except importlib.metadata.PackageNotFoundError:
    return
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # devices already initialised
    pass


def start_command() -> None:
  """The start of train.py, eval.py and `python -m coca_jax.inference.batch`, after absl has
  parsed the flags: WARNING logs only unless --verbosity is given (the progress lines stay),
  no libtpu start-up errors on a machine without TPU chips (`skip_absent_tpu`), GPUs left to
  JAX (`hide_accelerators_from_tensorflow`); on a CPU, first a restart with huge pages for
  XLA's host buffers (`host_memory.restart_with_huge_pages`, a third less time per step)."""
  from absl import flags, logging  # pylint: disable=import-outside-toplevel
  if runs_on_cpu():
    host_memory.restart_with_huge_pages()
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  skip_absent_tpu()
  hide_accelerators_from_tensorflow()
