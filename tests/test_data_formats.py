"""People's own data: open_clip CSV/TSV, JSONL, img2dataset webdataset and TFRecord shards
(converted to TFDS, or streamed shard by shard), TFDS datasets with nested caption features,
classification datasets through templates, mixtures, and the conversion command."""
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from coca_jax import data, tokenizers
from coca_jax.data import formats, shapes

COLOURS = list(shapes.COLOURS.items())


def picture(i: int, size=(24, 20)) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", size, COLOURS[i % len(COLOURS)][1]).save(out, format="JPEG", quality=95)
  return out.getvalue()


def caption(i: int) -> str:
  return f"a {COLOURS[i % len(COLOURS)][0]} zebra number {i}"


def write_images(root, n):
  (root / "images").mkdir(parents=True, exist_ok=True)
  for i in range(n):
    (root / "images" / f"{i:03d}.jpg").write_bytes(picture(i))


def write_tar_shards(root, n, per_shard):
  """img2dataset's webdataset layout: shard NNNNN.tar holding KEY.jpg, KEY.txt, KEY.json."""
  root.mkdir(parents=True, exist_ok=True)
  for shard in range(-(-n // per_shard)):
    with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
      for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
        key = f"{shard:05d}{i:04d}"
        for ext, payload in (("jpg", picture(i)), ("txt", caption(i).encode()),
                             ("json", json.dumps({"key": key, "caption": caption(i)}).encode())):
          info = tarfile.TarInfo(f"{key}.{ext}")
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
  return str(root / f"{{00000..{shard:05d}}}.tar")


def write_tfrecord_shards(root, n, per_shard):
  """img2dataset's TFRecord layout: tf.train.Example with key, jpg, txt."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  root.mkdir(parents=True, exist_ok=True)
  for shard in range(-(-n // per_shard)):
    with tf.io.TFRecordWriter(str(root / f"{shard:05d}.tfrecord")) as writer:
      for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
        feature = {
            "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"{i:09d}".encode()])),
            "jpg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[picture(i)])),
            "txt": tf.train.Feature(bytes_list=tf.train.BytesList(value=[caption(i).encode()])),
        }
        writer.write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
  return str(root)


@pytest.fixture(scope="module")
def tok():
  return tokenizers.load("embedded")


def all_captions(cfg, tok, spec):
  it = data.build_eval_iterator(cfg, global_batch_size=4, process_index=0, process_count=1,
                                tokenizer=tok, dataset=spec)
  out = []
  for batch in it:
    assert batch["images"].shape[1:] == (cfg["image_size"],) * 2 + (3,)
    out += [tok.decode(t) for t, m in zip(batch["text"], batch["mask"]) if m]
  return out


def base_config(tmp_path):
  return dict(data_dir=str(tmp_path / "tfds"), image_size=16, text_length=40)


def test_open_clip_csv_with_configured_columns(tmp_path, tok):
  write_images(tmp_path / "data", 10)
  lines = ["caption;path"] + [f"{caption(i)};images/{i:03d}.jpg" for i in range(10)]
  (tmp_path / "data" / "pairs.csv").write_text("\n".join(lines) + "\n")
  spec = dict(name="mine", format="csv", path=str(tmp_path / "data" / "pairs.csv"),
              image_key="path", text_key="caption", separator=";")
  assert sorted(all_captions(base_config(tmp_path), tok, spec)) == sorted(
      caption(i) for i in range(10))


def test_tsv_with_open_clip_default_columns(tmp_path, tok):
  write_images(tmp_path, 6)
  lines = ["filepath\ttitle"] + [f"{tmp_path}/images/{i:03d}.jpg\t{caption(i)}"
                                 for i in range(6)]  # absolute paths too
  (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
  spec = dict(name="tsv", format="tsv", path=str(tmp_path / "train.tsv"))
  assert len(all_captions(base_config(tmp_path), tok, spec)) == 6


def test_jsonl(tmp_path, tok):
  write_images(tmp_path, 5)
  lines = [json.dumps({"image": f"images/{i:03d}.jpg", "caption": caption(i)}) for i in range(5)]
  (tmp_path / "pairs.jsonl").write_text("\n".join(lines + ["not json"]) + "\n")
  spec = dict(name="lines", format="jsonl", path=str(tmp_path / "pairs.jsonl"))
  assert sorted(all_captions(base_config(tmp_path), tok, spec)) == sorted(
      caption(i) for i in range(5))


@pytest.mark.parametrize("fmt", ["webdataset", "tfrecord"])
def test_img2dataset_shards_converted(tmp_path, tok, fmt):
  write = write_tar_shards if fmt == "webdataset" else write_tfrecord_shards
  path = write(tmp_path / "shards", 11, 4)
  spec = dict(name="web", format=fmt, path=path)
  assert sorted(all_captions(base_config(tmp_path), tok, spec)) == sorted(
      caption(i) for i in range(11))


def test_tfds_dataset_with_nested_captions(tmp_path, tok):
  # A catalog-style dataset with coco_captions' features (several captions per image).
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(encoding_format="jpeg"),
      "captions": tfds.features.Sequence({"text": tfds.features.Text(), "id": np.int64}),
  })
  examples = [(i, {"image": picture(i), "captions": [{"text": f"{caption(i)} take {k}", "id": k}
                                                     for k in range(1 + i % 3)]})
              for i in range(6)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name="coco_like", version="1.0.0", features=features, split_datasets={"val": examples},
      data_dir=str(tmp_path / "tfds"), file_format="array_record")
  cfg = base_config(tmp_path)
  spec = dict(name="coco_like", split="val", text_key="captions/text")
  assert sorted(all_captions(cfg, tok, spec)) == sorted(f"{caption(i)} take 0" for i in range(6))
  # Training picks among an image's captions.
  it = data.build_train_iterator({**cfg, "train": spec}, global_batch_size=6, seed=0,
                                 process_index=0, process_count=1, tokenizer=tok)
  seen = {tok.decode(t) for _ in range(20) for t in next(it)["text"]}
  assert {f"{caption(2)} take {k}" for k in range(3)} <= seen


def test_classification_through_templates(tmp_path, tok):
  cfg = {**base_config(tmp_path), "image_size": 32}
  spec = dict(name="coca_shapes/small", split="validation", templates=["a drawing of a {}"])
  texts = all_captions(cfg, tok, spec)
  assert len(texts) == 96 and all(t.startswith("a drawing of a ") for t in texts)
  assert {t.removeprefix("a drawing of a ") for t in texts} <= set(shapes.CLASS_NAMES)
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    it = data.build_train_iterator(
        {**base_config(tmp_path), "train": dict(name="cifar10", split="test", templates="clip")},
        global_batch_size=4, seed=0, process_index=0, process_count=1, tokenizer=tok)
    batch = next(it)
    assert batch["images"].shape == (4, 16, 16, 3)
    assert all(tok.decode(t).startswith(("a ", "itap", "art")) for t in batch["text"])


def test_mixture_has_exact_per_batch_proportions_and_resumes(tmp_path, tok):
  write_images(tmp_path, 8)
  lines = ["filepath,title"] + [f"images/{i:03d}.jpg,{caption(i)}" for i in range(8)]
  (tmp_path / "zebras.csv").write_text("\n".join(lines) + "\n")
  cfg = {**base_config(tmp_path), "image_size": 32, "train": {
      "shapes": dict(name="coca_shapes/small", weight=3),
      "zebras": dict(name="zebras", format="csv", path=str(tmp_path / "zebras.csv"), weight=1)}}

  def batches(count, n, state=None):
    its = [data.build_train_iterator(cfg, global_batch_size=8, seed=0, process_index=p,
                                     process_count=count, tokenizer=tok) for p in range(count)]
    for it in its:
      if state:
        it.set_state(state)
    out = [[next(it)["text"] for it in its] for _ in range(n)]
    return [np.stack(parts, 1).reshape(8, -1) for parts in out], its

  straight, _ = batches(1, 6)
  for batch in straight:
    assert sum("zebra" in tok.decode(t) for t in batch) == 2  # exactly a quarter
  _, its = batches(2, 3)
  resumed, _ = batches(1, 3, its[0].get_state())
  for a, b in zip(straight[3:], resumed):
    np.testing.assert_array_equal(a, b)


def stream_batches(cfg, tok, count, n, states=None, seed=0, batch=8):
  its = [data.build_train_iterator(cfg, global_batch_size=batch, seed=seed, process_index=p,
                                   process_count=count, tokenizer=tok) for p in range(count)]
  if states:
    for it, state in zip(its, states):
      it.set_state(state)
  return [[tok.decode(t) for it in its for t in next(it)["text"]] for _ in range(n)], its


def test_streamed_shards_are_read_in_place_and_cover_each_epoch(tmp_path, tok):
  path = write_tar_shards(tmp_path / "shards", 30, 7)  # 5 shards, the last one short
  cfg = {**base_config(tmp_path), "shuffle_window": 4,
         "train": dict(name="web", format="webdataset", path=path, stream=True)}
  batches, _ = stream_batches(cfg, tok, 1, 8, batch=5)
  seen = [t for b in batches for t in b]
  assert sorted(seen[:30]) == sorted(caption(i) for i in range(30))  # one epoch, no repeats
  assert seen[:30] != [caption(i) for i in range(30)]  # shuffled shards and windows
  assert not (tmp_path / "tfds").exists()  # nothing converted or copied


def test_streamed_resume_is_exact_and_needs_the_same_process_count(tmp_path, tok):
  path = write_tfrecord_shards(tmp_path / "shards", 23, 5)
  cfg = {**base_config(tmp_path), "shuffle_window": 3,
         "train": dict(name="web", format="tfrecord", path=path, stream=True)}
  straight, _ = stream_batches(cfg, tok, 2, 9)
  _, its = stream_batches(cfg, tok, 2, 4)
  states = [it.get_state() for it in its]
  resumed, _ = stream_batches(cfg, tok, 2, 5, states)
  assert resumed == straight[4:]
  # Each process got its share, and none read the same record within an epoch.
  first_epoch = [t for b in straight[:2] for t in b]
  assert len(set(first_epoch)) == len(first_epoch)
  with pytest.raises(ValueError, match="different process layout"):
    stream_batches(cfg, tok, 1, 1, states[:1])


def test_more_processes_than_shards_all_get_batches(tmp_path, tok):
  path = write_tar_shards(tmp_path / "shards", 6, 3)  # 2 shards, 4 processes
  cfg = {**base_config(tmp_path),
         "train": dict(name="web", format="webdataset", path=path, stream=True)}
  batches, its = stream_batches(cfg, tok, 4, 3)
  assert all(len(b) == 8 for b in batches)


def test_streamed_bad_records_are_skipped_and_counted(tmp_path, tok):
  root = tmp_path / "shards"
  path = write_tar_shards(root, 8, 8)
  with tarfile.open(root / "00000.tar", "a") as tar:  # add broken samples
    for key, parts in (("x1", {"jpg": b"not a jpeg", "txt": b"broken"}),
                       ("x2", {"txt": b"no image"}), ("x3", {"jpg": picture(0), "txt": b" "})):
      for ext, payload in parts.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
  cfg = {**base_config(tmp_path),
         "train": dict(name="web", format="webdataset", path=path, stream=True)}
  (batch,), (it,) = stream_batches(cfg, tok, 1, 1)
  assert set(batch) == {caption(i) for i in range(8)}
  assert it.stats()["bad_records"] == 3
  assert it.stats()["bad_records/record_incomplete"] == 1


def test_convert_command(tmp_path, tok):
  train = write_tar_shards(tmp_path / "train", 9, 4)
  val = write_tar_shards(tmp_path / "val", 3, 4)
  result = subprocess.run(
      [sys.executable, "-m", "coca_jax.data.convert", "--name=mine", "--format=webdataset",
       f"--split=train={train}", f"--split=validation={val}", f"--data_dir={tmp_path / 'out'}"],
      capture_output=True, text=True, check=True, timeout=300)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["bad_records"]["train"]["kept"] == 9
  assert report["bad_records"]["validation"] == {"kept": 3, "captions": 3, "dropped": 0}
  spec = dict(format="tfds", path=report["builder_dir"], split="validation")
  assert sorted(all_captions(base_config(tmp_path), tok, spec)) == sorted(
      caption(i) for i in range(3))


def test_paths_expand():
  assert [p.name for p in formats.expand_paths("/x/{008..011}.tar", "webdataset")] == [
      "008.tar", "009.tar", "010.tar", "011.tar"]


def test_streamed_and_random_access_mixture(tmp_path, tok):
  path = write_tar_shards(tmp_path / "shards", 12, 5)
  cfg = {**base_config(tmp_path), "image_size": 32, "train": [
      dict(name="coca_shapes/small", weight=0.5),
      dict(name="web", format="webdataset", path=path, stream=True, weight=0.5)]}
  straight, _ = stream_batches(cfg, tok, 2, 6)
  for batch in straight:
    assert sum("zebra" in t for t in batch) == 4  # half of each batch, in each process
  _, its = stream_batches(cfg, tok, 2, 2)
  resumed, _ = stream_batches(cfg, tok, 2, 4, [it.get_state() for it in its])
  assert resumed == straight[2:]


def test_unreadable_shard_is_skipped_and_counted(tmp_path, tok):
  path = write_tar_shards(tmp_path / "shards", 8, 4)
  (tmp_path / "shards" / "00001.tar").unlink()  # listed by the range, but gone
  cfg = {**base_config(tmp_path),
         "train": dict(name="web", format="webdataset", path=path, stream=True)}
  batches, (it,) = stream_batches(cfg, tok, 1, 2, batch=4)
  assert all(t in {caption(i) for i in range(4)} for b in batches for t in b)
  assert it.stats()["bad_records/shard_unreadable"] >= 1


@pytest.mark.parametrize("stream", [False, True])
def test_mixture_caption_weights_ride_with_each_example(tmp_path, tok, stream):
  """A dataset's caption_weight comes with each of its examples ("caption_weight", float32),
  random-access and streamed alike; batches have no such field when every weight is 1, and a
  negative or non-finite weight is refused by name."""
  path = write_tar_shards(tmp_path / "shards", 12, 5)
  web = dict(name="web", format="webdataset", path=path, stream=stream, weight=0.5)
  shapes_spec = dict(name="coca_shapes/small", weight=0.5)
  cfg = {**base_config(tmp_path), "image_size": 32,
         "train": [dict(shapes_spec, caption_weight=0.0), dict(web, caption_weight=2.5)]}
  its = [data.build_train_iterator(cfg, global_batch_size=8, seed=0, process_index=p,
                                   process_count=2, tokenizer=tok) for p in range(2)]
  for _ in range(2):
    for it in its:
      batch = next(it)
      assert batch["caption_weight"].dtype == np.float32 and batch["caption_weight"].shape == (4,)
      zebra = np.array(["zebra" in tok.decode(t) for t in batch["text"]])
      np.testing.assert_array_equal(batch["caption_weight"], np.where(zebra, 2.5, 0.0))
  assert data.batch_fields(cfg) == ("images", "text", "caption_weight")
  plain = {**cfg, "train": [shapes_spec, web]}
  assert data.batch_fields(plain) == ("images", "text")
  it = data.build_train_iterator(plain, global_batch_size=8, seed=0, process_index=0,
                                 process_count=1, tokenizer=tok)
  assert set(next(it)) == {"images", "text"}
  for bad in (-1.0, float("nan"), "1"):
    with pytest.raises(ValueError, match="caption_weight"):
      data.build_train_iterator({**cfg, "train": [dict(shapes_spec, caption_weight=bad)]},
                                global_batch_size=8, seed=0, process_index=0, process_count=1,
                                tokenizer=tok)
