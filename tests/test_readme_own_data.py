"""The README's "Train on your own data" commands run as written on a small $DATA made here
(only the training command gets a shorter --config.num_train_steps)."""
import json
import os
import re
import subprocess

import numpy as np
from PIL import Image, ImageDraw

from train_fixtures import ROOT, subprocess_env

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}
SHAPES = ("square", "circle")


def picture(colour, shape, seed):
  rng = np.random.default_rng(seed)
  image = Image.new("RGB", (40, 40), tuple(int(v) for v in rng.integers(0, 60, 3)))
  x, y = rng.integers(2, 14, 2)
  box = (int(x), int(y), int(x) + 24, int(y) + 24)
  draw = ImageDraw.Draw(image)
  (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
  return image


def make_data(root):
  (root / "images").mkdir(parents=True)
  rows = {"train": ["filepath,title"], "val": ["filepath,title"]}
  n = 0
  for split, count in (("train", 6), ("val", 2)):
    for colour in COLOURS:
      for shape in SHAPES:
        for _ in range(count):
          name = f"images/{n:03d}.png"
          picture(colour, shape, n).save(root / name)
          rows[split].append(f"{name},a {colour} {shape}")
          if n % 5 == 0:  # a second caption for some pictures
            rows[split].append(f"{name},a picture of a {shape} in {colour}")
          n += 1
  for split in rows:
    (root / f"{split}.csv").write_text("\n".join(rows[split]) + "\n")
  for split, count in (("train", 8), ("val", 3)):
    for colour in COLOURS:
      folder = root / "classes" / split / colour
      folder.mkdir(parents=True)
      for k in range(count):
        picture(colour, SHAPES[k % 2], 1000 + k + 50 * len(colour)).save(folder / f"{k}.png")
  (root / "photos").mkdir()
  for k, colour in enumerate(COLOURS):
    picture(colour, "circle", 2000 + k).save(root / "photos" / f"{colour}.jpg")
  (root / "photos" / "broken.jpg").write_bytes(b"not a picture")


def readme_commands():
  readme = (ROOT / "README.md").read_text()
  section = readme.split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
  block = section.split("```bash\n", 1)[1].split("```", 1)[0]
  return [line for line in block.splitlines() if line.strip()]


def test_readme_own_data_commands_run_as_written(tmp_path):
  data, work = tmp_path / "data", tmp_path / "work"
  make_data(data)
  work.mkdir()
  env = {**subprocess_env(), "DATA": str(data), "WORK": str(work),
         "TFDS_DATA_DIR": str(tmp_path / "tfds")}
  commands = readme_commands()
  assert len(commands) == 8
  for command in commands:
    if command.startswith("tensorboard"):
      continue  # a server: watching is not tested
    if command.startswith("python train.py"):
      command += " --config.num_train_steps=4"
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
    if command.startswith("python train.py"):
      assert re.search(r"step 4/4 \| loss", result.stdout), result.stdout[-2000:]
    if command.startswith("python -c"):  # the export loads elsewhere, tokenizer included
      embed_dim, vocab = result.stdout.split()
      assert embed_dim == "64" and 0 < int(vocab) <= 1000
  zero_shot = work / "run" / "final_metrics.json"
  assert zero_shot.exists()
  results = json.loads((work / "eval" / "results.json").read_text())["results"]
  assert results["retrieval/images"] == 12 and results["retrieval/texts"] > 12
  assert "captions/cider" in results and "captions/clip_s" in results
  rows = [json.loads(x) for x in (work / "photos" / "captions.jsonl").read_text().splitlines()]
  assert sorted(os.path.basename(r["path"]) for r in rows) == ["blue.jpg", "green.jpg",
                                                                "red.jpg"]
  assert (work / "photos" / "unreadable.txt").read_text().split() == [
      str(data / "photos" / "broken.jpg")]
