"""Orbax checkpoint arguments for the data iterator's state.

Each process writes its own `process_<i>-of-<n>.json` (as Grain's handler does). On restore, a
process reads its own file, or, when the process count changed, process 0's: the iterator then
accepts it (index-based data: the state is the global position) or refuses with the reason
(streamed data). The file names use the iterator's own process index and count.
"""
import dataclasses
from typing import Any

import grain
from etils import epath
import orbax.checkpoint as ocp


class IteratorHandler(grain.checkpoint.CheckpointHandler):
  """Saves and restores `DataIterator.get_state()` / `set_state()`."""

  def save(self, directory: epath.Path, item: Any = None, args: Any = None):
    """Writes the iterator's state as DIRECTORY/process_<i>-of-<n>.json."""
    item = item or args.item
    name = f"process_{item.process_index}-of-{item.process_count}.json"
    (epath.Path(directory) / name).write_text(item.get_state().decode())

  def restore(self, directory: epath.Path, item: Any = None, args: Any = None):
    """Sets the iterator to this process's saved state (or process 0's when the process
    count changed; random-access data resumes exactly either way) and returns it. Raises
    FileNotFoundError when the directory holds no state."""
    item = item or args.item
    directory = epath.Path(directory)
    own = directory / f"process_{item.process_index}-of-{item.process_count}.json"
    if not own.exists():
      saved = sorted(directory.glob("process_0-of-*.json"))
      if not saved:
        raise FileNotFoundError(f"no data iterator state in {directory}")
      own = saved[0]
    item.set_state(own.read_text().encode())
    return item


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  """Orbax argument: save this data iterator's position."""
  item: Any


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  """Orbax argument: restore this data iterator's position in place."""
  item: Any
