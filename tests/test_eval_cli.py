"""eval.py end to end as a subprocess: ImageNet prepared by TFDS from a tiny self-made manual
directory in the official tar layout, and two processes counting every example exactly once."""
import io
import json
import pathlib
import subprocess
import sys
import tarfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from coca_jax.checkpoints import params_dir as params_dir_lib
from coca_jax.evals import imagenet
from coca_jax.model import create_model
from test_train_processes import free_port
from train_fixtures import MICRO_TRAIN, ROOT, micro_config, subprocess_env

NUM_VAL = 6


@pytest.fixture(scope="module")
def params_dir(tmp_path_factory):
  """A randomly initialised model of the micro training config, saved params-only."""
  config = micro_config()
  model = create_model(config.model)
  size, length = config.model.vision.image_size, config.data.text_length
  params = model.init(jax.random.key(3), jnp.zeros((1, size, size, 3)),
                      jnp.zeros((1, length), jnp.int32))["params"]
  params = nn.unbox(params)
  directory = tmp_path_factory.mktemp("params")
  params_dir_lib.save(str(directory), params, config.model)
  return directory


def run_eval(*args, devices=1, timeout=400):
  command = [sys.executable, str(ROOT / "eval.py"), f"--config={MICRO_TRAIN}", *args]
  return subprocess.Popen(command, env=subprocess_env(devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def finish(proc, timeout=400):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]
  return out


def _jpeg(rng, size=(40, 32)):
  buffer = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(
      buffer, format="JPEG")
  return buffer.getvalue()


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def make_imagenet_manual_dir(root: pathlib.Path, val_labels):
  """ILSVRC2012_img_val.tar: flat ILSVRC2012_val_%08d.JPEG (TFDS labels them from its bundled
  list, by sorted file name); ILSVRC2012_img_train.tar: one <wnid>.tar per class."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True)
  with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
    for i in range(NUM_VAL):
      _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng))
  with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as tar:
    for wnid in sorted(set(val_labels))[:3]:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as class_tar:
        for k in range(2):
          _add(class_tar, f"{wnid}_{k}.JPEG", _jpeg(rng))
      _add(tar, f"{wnid}.tar", inner.getvalue())


def test_imagenet_zero_shot_end_to_end_from_a_manual_dir(tmp_path, params_dir):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  labels_dir = pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012"
  wnids = (labels_dir / "labels.txt").read_text().split()
  val_labels = (labels_dir / "validation_labels.txt").read_text().split()[:NUM_VAL]
  make_imagenet_manual_dir(tmp_path / "manual", val_labels)
  out = finish(run_eval(f"--checkpoint={params_dir}", "--evals=zeroshot",
                        "--dataset=imagenet2012", f"--manual_dir={tmp_path / 'manual'}",
                        f"--data_dir={tmp_path / 'tfds'}", f"--output={tmp_path / 'out'}"))
  assert "preparing imagenet2012" in out
  results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
  assert results["zeroshot/examples"] == NUM_VAL
  assert results["zeroshot/chance"] == pytest.approx(1 / 1000)
  assert 0 <= results["zeroshot/top1"] <= results["zeroshot/top5"] <= 1
  assert "zeroshot/top1" in out and "zeroshot/examples" in out  # the printed table
  # The prepared split: TFDS's labels, which index CLIP's curated names in the same order.
  builder = tfds.builder("imagenet2012", data_dir=str(tmp_path / "tfds"))
  source = builder.as_data_source("validation")
  got = sorted((r["file_name"], int(r["label"])) for r in source)
  assert [wnids[label] for _, label in got] == val_labels
  assert imagenet.class_names()[wnids.index("n01751748")] == "sea snake"
  assert len(builder.as_data_source("train")) == 6


def test_two_processes_count_every_example_once_and_agree_with_one(tmp_path, params_dir):
  split = "--dataset=coca_shapes:validation[:37]"
  args = [f"--checkpoint={params_dir}", "--evals=zeroshot,retrieval,captioning", split,
          "--batch_size=16", "--num_captions=0"]
  port = free_port()
  procs = [run_eval(*args, f"--output={tmp_path / f'two{i}'}",
                    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    "--config.distributed.num_processes=2",
                    f"--config.distributed.process_id={i}", devices=2) for i in range(2)]
  outs = [finish(p) for p in procs]
  single = finish(run_eval(*args, f"--output={tmp_path / 'one'}", devices=4))
  two = json.loads((tmp_path / "two0" / "results.json").read_text())["results"]
  one = json.loads((tmp_path / "one" / "results.json").read_text())["results"]
  assert not (tmp_path / "two1" / "results.json").exists()  # process 0 writes
  assert "zeroshot/top1" in outs[0] and "zeroshot/top1" not in outs[1]
  for r in (one, two):
    assert r["zeroshot/examples"] == 37 and r["retrieval/images"] == 37
    assert r["captions/num_examples"] == 37
  for key, value in one.items():
    if isinstance(value, float):
      assert two[key] == pytest.approx(value, abs=1e-6), key
  lines = (tmp_path / "two0" / "captions.jsonl").read_text().splitlines()
  assert sorted(json.loads(line)["index"] for line in lines) == list(range(37))
  assert "captioning" in single
  picture = Image.open(tmp_path / "two0" / "retrieval_examples.png")  # top-5 of 4 queries
  assert picture.width > 5 * 128 and picture.height >= 4 * 128


def test_decoding_flags_reach_the_caption_evaluator(tmp_path, params_dir):
  out = finish(run_eval(f"--checkpoint={params_dir}", "--evals=captioning",
                        "--dataset=coca_shapes:validation[:8]", "--num_captions=8",
                        "--strategy=beam", "--num_beams=2", "--repetition_penalty=1.4",
                        "--no_repeat_ngram_size=2", f"--output={tmp_path / 'out'}"))
  assert "captions/" in out
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  generated = [pair[0] for pair in results["results"]["captions/examples"]]
  assert generated
  for caption in generated:
    words = caption.split()
    pairs = list(zip(words, words[1:]))
    assert len(pairs) == len(set(pairs)), caption
