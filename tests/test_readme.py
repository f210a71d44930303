"""The README's example for other JAX projects runs as written (on a tiny export)."""
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from PIL import Image

import coca_jax
from coca_jax import params_checkpoint, tokenizers
from train_fixtures import ROOT, micro_config, subprocess_env


def test_readme_example_runs_in_a_fresh_process(tmp_path):
  config = micro_config()
  model = coca_jax.create_model(config.model)
  size, length = model.cfg.vision.image_size, model.cfg.text.context_length
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                        jnp.zeros((1, length), jnp.int32)))["params"]
  export = tmp_path / "export"
  params_checkpoint.save(export, params, config.model, tokenizer=tokenizers.load("embedded"))
  Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "cat.jpg")

  readme = (ROOT / "README.md").read_text()
  code = readme.split("```python\n")[1].split("```")[0]
  assert len(code.strip().splitlines()) < 15
  code = code.replace("/path/to/export", str(export)).replace('"cat.jpg"',
                                                                repr(str(tmp_path / "cat.jpg")))
  script = tmp_path / "example.py"
  script.write_text(code)
  result = subprocess.run([sys.executable, str(script)], env=subprocess_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "zero-shot: " in result.stdout and "caption: " in result.stdout
