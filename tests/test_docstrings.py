"""Every public definition of the package says what a caller needs: a docstring, and for a
function that takes or returns arrays, their shapes and dtypes ("images (B, H, W, 3) float32").

Found from the source (ast), so modules are not imported. Private names (a leading
underscore), definitions inside functions and the thin `python -m` shims are left out.
"""
import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "coca_jax"

# Parameter names that hold arrays wherever they appear in the package.
ARRAY_PARAMS = {
    "images", "image", "text", "tokens", "logits", "labels", "mask", "embeddings",
    "image_embed", "text_embed", "image_tokens", "features", "scores", "pos", "x", "q",
    "key", "value", "kernel", "grads", "example_weights", "targets", "attention_mask"}
ARRAY_ANNOTATIONS = re.compile(r"\b(jax\.Array|jnp\.ndarray|np\.ndarray|Array|ArrayLike)\b")
# "(B, L)", "(B,)", "(N, D)", "(B, 1, T, S)", "(extra + g*g, D)", "()" (a scalar)
SHAPE = re.compile(r"\((?:\)|[^()]*[A-Za-z0-9_*+ ]+,[^()]*\)|[A-Z][\w*+ /-]*\))")
DTYPE = re.compile(r"\b(u?int(8|16|32|64)|float(16|32|64)?|bfloat16|bf16|f32|i32|bool|"
                   r"dtype|integers?|floats?)\b")


def _definitions():
  """(module path, qualified name, node) of every public function, class and method."""
  for path in sorted(PACKAGE.rglob("*.py")):
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PACKAGE.parent)
    for node in tree.body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        if node.name.startswith("_"):
          continue
        yield rel, node.name, node
        if isinstance(node, ast.ClassDef):
          for item in node.body:
            if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                and not item.name.startswith("_")):
              yield rel, f"{node.name}.{item.name}", item


def _takes_or_returns_arrays(node) -> bool:
  args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
  if any(a.arg in ARRAY_PARAMS for a in args):
    return True
  annotations = [a.annotation for a in args if a.annotation is not None] + [node.returns]
  return any(a is not None and ARRAY_ANNOTATIONS.search(ast.unparse(a)) for a in annotations)


def test_every_public_definition_has_a_docstring():
  missing = [f"{path}:{node.lineno} {name}" for path, name, node in _definitions()
             if not ast.get_docstring(node)]
  assert not missing, f"{len(missing)} public definitions without a docstring:\n" + \
      "\n".join(missing)


def test_array_functions_give_shapes_and_dtypes():
  vague = []
  for path, name, node in _definitions():
    if isinstance(node, ast.ClassDef) or not _takes_or_returns_arrays(node):
      continue
    doc = ast.get_docstring(node) or ""
    if not (SHAPE.search(doc) and DTYPE.search(doc)):
      vague.append(f"{path}:{node.lineno} {name}")
  assert not vague, (f"{len(vague)} functions on arrays whose docstring gives no shape such "
                     "as (B, L) and dtype such as int32:\n" + "\n".join(vague))


def test_the_checks_can_fail():
  """The patterns accept what they should and refuse plain prose."""
  assert SHAPE.search("tokens (B, L) int32") and DTYPE.search("tokens (B, L) int32")
  assert SHAPE.search("a scalar () float32") and SHAPE.search("weights (B,) float32")
  assert not SHAPE.search("the tokens (as before)") and not SHAPE.search("(see above)")
  tree = ast.parse("def f(images):\n  'Embeds.'\n")
  assert _takes_or_returns_arrays(tree.body[0])
