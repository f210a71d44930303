"""No import cycle anywhere in the package: the graph of its modules, built from the source with
the imports inside functions included, has no cycle. (A cycle that only works because one side
imports late is still a cycle: the two modules are one unit that cannot be read apart.)

An edge goes from a module to each package module it names: `from coca_jax.a import b` names
coca_jax.a.b when that is a module, else coca_jax.a (b is then a name defined there). The import
of a package's `__init__` that Python performs before a submodule is not an edge of its own.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "coca_jax"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
  return {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}


def imports_of(path: pathlib.Path, known) -> set:
  """The package modules `path` imports anywhere in its source."""
  found = set()
  package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(
      ".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the package this module is in
        anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        full = f"{base}.{alias.name}"
        found.add(full if full in known else base)
  return {name for name in found if name in known}


def graph():
  known = modules()
  return {name: imports_of(path, known) - {name} for name, path in known.items()}


def find_cycle(edges):
  """One cycle as a list of modules (first == last), or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(edges):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_no_import_cycle_in_the_package():
  edges = graph()
  assert len(edges) > 50 and edges["coca_jax.train.pretrain"]  # the graph was really built
  cycle = find_cycle(edges)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_inside_functions_count_and_cycles_are_found():
  tree_source = "def f():\n  from coca_jax.train import classify\n"
  (found,) = [n for n in ast.walk(ast.parse(tree_source)) if isinstance(n, ast.ImportFrom)]
  assert found.module == "coca_jax.train"
  assert imports_of(ROOT / PACKAGE / "train" / "__init__.py", modules()) >= {
      "coca_jax.train.pretrain", "coca_jax.train.classify"}  # both inside a function
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_old_entry_points_still_run():
  """`python -m coca_jax.model.summary` (and the other one-release shims) runs the moved tool."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from train_fixtures import subprocess_env  # pylint: disable=import-outside-toplevel
  result = subprocess.run([sys.executable, "-m", "coca_jax.model.summary",
                           "--config=configs/tiny.py"], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "total" in result.stdout
  for shim in ("infer.py", "aot.py", "model/summary.py"):
    source = (ROOT / PACKAGE / shim).read_text()
    assert "runpy.run_module" in source and len(source.splitlines()) < 8
