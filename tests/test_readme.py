"""The README's example for other JAX projects runs as written (on a tiny export)."""
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

import coca_jax
from coca_jax import tokenizers
from coca_jax.checkpoints import params_dir
from train_fixtures import ROOT, micro_config, subprocess_env


def test_readme_example_runs_in_a_fresh_process(tmp_path):
  config = micro_config()
  model = coca_jax.create_model(config.model)
  size, length = model.cfg.vision.image_size, model.cfg.text.context_length
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                        jnp.zeros((1, length), jnp.int32)))["params"]
  export = tmp_path / "export"
  params_dir.save(export, params, config.model, tokenizer=tokenizers.load("embedded"))
  # A phone photo: stored sideways, EXIF Orientation 6 (shown rotated 90 degrees clockwise).
  stored = np.random.default_rng(0).integers(0, 255, (30, 40, 3), np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(stored).save(tmp_path / "cat.jpg", quality=95, exif=exif.tobytes())

  readme = (ROOT / "README.md").read_text()
  code = readme.split("```python\n")[1].split("```")[0]
  assert len(code.strip().splitlines()) <= 15
  code = code.replace("/path/to/export", str(export)).replace('"cat.jpg"',
                                                                repr(str(tmp_path / "cat.jpg")))
  script = tmp_path / "example.py"
  script.write_text(code + "\nnp.save('x.npy', np.asarray(x))\n")
  result = subprocess.run([sys.executable, str(script)], env=subprocess_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "zero-shot: " in result.stdout and "caption: " in result.stdout
  # The model saw the photo upright.
  upright = Image.fromarray(np.rot90(np.asarray(Image.open(tmp_path / "cat.jpg")), -1))
  mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
  expected = (np.asarray(upright.resize((size, size), Image.BICUBIC), np.float32) / 255
              - mean) / std
  np.testing.assert_allclose(np.load(tmp_path / "x.npy")[0], expected, atol=1e-5)
