"""The README's backbone example (the image encoder alone, from another JAX project) runs as
written, in a fresh process, on a tiny export."""
import subprocess
import sys

from train_fixtures import ROOT, random_micro_export, subprocess_env

HEADING = "## The image encoder as a backbone"


def readme_block(heading: str) -> str:
  """The first ```python block after `heading` in README.md."""
  readme = (ROOT / "README.md").read_text()
  assert heading in readme, f"README.md has no section {heading!r}"
  return readme.split(heading, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def test_backbone_example_runs_in_a_fresh_process(tmp_path):
  export = random_micro_export(tmp_path / "export")
  code = readme_block(HEADING)
  assert len(code.strip().splitlines()) <= 12
  script = tmp_path / "backbone.py"
  script.write_text(code.replace("/path/to/export", str(export)))
  result = subprocess.run([sys.executable, str(script)], env=subprocess_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  # Micro config: 16 px images, 4 px patches -> 16 tokens of width 32; embed_dim 32.
  assert "patch tokens (4, 16, 32) pooled embedding (4, 32)" in result.stdout, result.stdout
