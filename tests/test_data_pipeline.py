"""Train and eval iterators on the embedded dataset: shapes, determinism, process shares, exact
resume (also with another process count and through Orbax), evaluation coverage, timing."""
import collections

import numpy as np
import orbax.checkpoint as ocp
import pytest

from coca_jax import data, tokenizers
from coca_jax.checkpoints.data_iterator import IteratorRestore, IteratorSave

B = 8


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
  config = data.default_config()
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.train = dict(name="coca_shapes/small", split="train")
  config.eval = dict(name="coca_shapes/small", split="validation")
  data.prepare(config)
  return config


@pytest.fixture(scope="module")
def tok():
  return tokenizers.load("embedded")


def train_iterators(cfg, tok, process_count, seed=0, batch=B):
  return [data.build_train_iterator(cfg, global_batch_size=batch, seed=seed, process_index=p,
                                    process_count=process_count, tokenizer=tok)
          for p in range(process_count)]


def global_batches(iterators, n):
  """Global batches from process-local ones: process p holds global slots p, p + P, ..."""
  out = []
  for _ in range(n):
    parts = [next(it) for it in iterators]
    out.append({k: np.stack([p[k] for p in parts], 1).reshape(-1, *parts[0][k].shape[1:])
                for k in parts[0]})
  return out


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_batches(cfg, tok):
  it, = train_iterators(cfg, tok, 1)
  batch = next(it)
  assert set(batch) == {"images", "text"}
  assert batch["images"].shape == (B, 32, 32, 3) and batch["images"].dtype == np.float32
  assert batch["text"].shape == (B, 24) and batch["text"].dtype == np.int32
  assert (batch["text"][:, 0] == tok.bos_id).all() and (batch["text"] == tok.eos_id).any(1).all()
  assert -2.0 < batch["images"].min() < 0 < batch["images"].max() < 2.2  # CLIP-normalised
  captions = [tok.decode(t) for t in batch["text"]]
  assert all(c.split()[-1] in data.shapes.SHAPES + ("corner", "left", "right", "top", "bottom",
                                                    "center", "middle", "side") for c in captions)


def test_same_seed_same_batches_other_seed_differs(cfg, tok):
  a = global_batches(train_iterators(cfg, tok, 1, seed=3), 4)
  assert_same(a, global_batches(train_iterators(cfg, tok, 1, seed=3), 4))
  c = global_batches(train_iterators(cfg, tok, 1, seed=4), 1)
  assert not np.array_equal(a[0]["text"], c[0]["text"])


def test_processes_read_their_share_of_the_same_global_batches(cfg, tok):
  one = global_batches(train_iterators(cfg, tok, 1), 3)
  for count in (2, 4, 8):
    assert next(train_iterators(cfg, tok, count)[0])["images"].shape[0] == B // count
    iterators = train_iterators(cfg, tok, count)
    assert_same(global_batches(iterators, 3), one)


def test_epochs_cover_every_example_and_reshuffle(cfg, tok):
  eval_it = data.build_eval_iterator(cfg, global_batch_size=64, process_index=0,
                                     process_count=1, tokenizer=tok,
                                     dataset=dict(name="coca_shapes/small", split="train"))
  # Centre crops of the training images identify examples (eval preprocessing).
  keys = {b["images"][i].tobytes(): int(b["index"][i]) for b in eval_it for i in range(64)}
  assert len(keys) == 512
  cfg_center = dict(cfg.to_dict(), crop="center")
  it = data.build_train_iterator(cfg_center, global_batch_size=64, seed=0, process_index=0,
                                 process_count=1, tokenizer=tok)
  epochs = [[keys[im.tobytes()] for _ in range(8) for im in next(it)["images"]]
            for _ in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(512))
  assert epochs[0] != epochs[1]


@pytest.mark.parametrize("crop", ["center", "random_resized_crop"])
def test_memory_cache_leaves_batches_unchanged(cfg, tok, crop, monkeypatch):
  """cache_in_memory: over two epochs of a two-dataset mixture, the same batches as without;
  each record is read once, and with the centre crop each picture's pixels are kept."""
  from coca_jax.data import pipeline, sources  # pylint: disable=import-outside-toplevel
  reads, made, opened = collections.Counter(), [], []  # reads per Source (other tests' too)
  read, open_source = sources.Source.__getitem__, pipeline.open_source

  def counted_read(self, index):
    reads[id(self)] += 1
    return read(self, index)

  from_config = pipeline.ExampleMaker.from_config.__func__
  monkeypatch.setattr(sources.Source, "__getitem__", counted_read)
  monkeypatch.setattr(pipeline, "open_source",
                      lambda *a, **k: opened.append(open_source(*a, **k)) or opened[-1])
  monkeypatch.setattr(pipeline.ExampleMaker, "from_config", classmethod(
      lambda cls, *a, **k: made.append(from_config(cls, *a, **k)) or made[-1]))
  mixture = dict(captions=dict(name="coca_shapes/small", split="train", weight=0.5),
                 names=dict(name="coca_shapes/small", split="train", label_key="label",
                            templates="coca_shapes", weight=0.5))
  batches = {}
  for cache in (False, True):
    opened.clear()
    config = dict(cfg.to_dict(), crop=crop, train=mixture, cache_in_memory=cache)
    it = data.build_train_iterator(config, global_batch_size=64, seed=0, process_index=0,
                                   process_count=1, tokenizer=tok)
    batches[cache] = [next(it) for _ in range(17)]  # 544 examples of each 512-record dataset
    mine = [reads[id(s)] for s in opened]
    it.close()
  assert_same(batches[False], batches[True])
  # Each dataset's records once (two reader threads may both read a record that neither has
  # cached yet: a few reads of slack).
  assert len(mine) == 2 and all(512 <= n <= 512 + 8 for n in mine), mine
  pixels = made[-1].pixel_cache
  assert pixels is None if crop == "random_resized_crop" else 400 < len(pixels) <= 512


def test_resume_is_exact(cfg, tok):
  straight = global_batches(train_iterators(cfg, tok, 2), 7)
  first = train_iterators(cfg, tok, 2)
  global_batches(first, 4)
  states = [it.get_state() for it in first]
  resumed = train_iterators(cfg, tok, 2)
  for it, state in zip(resumed, states):
    it.set_state(state)
  assert_same(global_batches(resumed, 3), straight[4:])


@pytest.mark.parametrize("before,after", [(2, 1), (1, 4), (4, 2)])
def test_resume_with_another_process_count_is_exact(cfg, tok, before, after):
  straight = global_batches(train_iterators(cfg, tok, 1), 5)
  first = train_iterators(cfg, tok, before)
  global_batches(first, 2)
  resumed = train_iterators(cfg, tok, after)
  for it in resumed:
    it.set_state(first[0].get_state())
  assert_same(global_batches(resumed, 3), straight[2:])


def test_state_of_another_run_is_refused(cfg, tok):
  it, = train_iterators(cfg, tok, 1, seed=0)
  other, = train_iterators(cfg, tok, 1, seed=1)
  with pytest.raises(ValueError, match="seed"):
    other.set_state(it.get_state())
  bigger, = train_iterators(cfg, tok, 1, batch=16)
  with pytest.raises(ValueError, match="global_batch_size"):
    bigger.set_state(it.get_state())


def test_state_through_orbax_checkpoint(cfg, tok, tmp_path):
  straight = global_batches(train_iterators(cfg, tok, 2), 5)
  first = train_iterators(cfg, tok, 2)
  global_batches(first, 3)
  for it in first:  # each process saves its own file, as on a pod
    with ocp.CheckpointManager(tmp_path / f"ckpt{it.process_index}") as manager:
      manager.save(3, args=ocp.args.Composite(
          params=ocp.args.StandardSave({"w": np.arange(3.0)}), data=IteratorSave(it)))
      manager.wait_until_finished()
  assert [f.name for f in (tmp_path / "ckpt1" / "3" / "data").glob("*.json")] == [
      "process_1-of-2.json"]
  resumed = train_iterators(cfg, tok, 2)
  for it in resumed:
    with ocp.CheckpointManager(tmp_path / f"ckpt{it.process_index}") as manager:
      restored = manager.restore(3, args=ocp.args.Composite(
          params=ocp.args.StandardRestore({"w": np.zeros(3)}), data=IteratorRestore(it)))
      assert restored["data"] is it
  assert_same(global_batches(resumed, 2), straight[3:])
  # A single process restores the two-process checkpoint exactly (process 0's file).
  single, = train_iterators(cfg, tok, 1)
  with ocp.CheckpointManager(tmp_path / "ckpt0") as manager:
    manager.restore(3, args=ocp.args.Composite(data=IteratorRestore(single)))
  assert_same(global_batches([single], 2), straight[3:])


def test_stats_report_input_wait(cfg, tok):
  it, = train_iterators(cfg, tok, 1)
  for _ in range(3):
    next(it)
  stats = it.stats()
  assert stats["batches"] == 3 and stats["bad_records"] == 0
  assert 0 < stats["input_wait_s"] == it.input_wait_s


@pytest.mark.parametrize("count", [1, 2, 3])
def test_eval_yields_every_example_once(cfg, tok, count):
  batch = 30 if count != 3 else 27  # 96 examples: a padded last batch
  iterators = [data.build_eval_iterator(cfg, global_batch_size=batch, process_index=p,
                                        process_count=count, tokenizer=tok)
               for p in range(count)]
  assert {len(it) for it in iterators} == {4}
  seen = []
  for it in iterators:
    batches = list(it)
    assert len(batches) == 4
    for b in batches:
      assert b["images"].shape == (batch // count, 32, 32, 3)
      assert set(b) == {"images", "text", "label", "scene", "index", "mask"}
      seen.extend(b["index"][b["mask"]].tolist())
      assert (b["label"][b["mask"]] >= 0).all() and (b["label"][~b["mask"]] == -1).all()
      assert (b["text"][~b["mask"], 1] == tok.eos_id).all()  # padding texts are valid
  assert sorted(seen) == list(range(96))
  again = [b["index"] for b in iterators[0]]
  assert np.array_equal(np.concatenate(again), np.concatenate([b["index"] for b in iterators[0]]))


def test_eval_is_deterministic_centre_crop(cfg, tok):
  a = next(iter(data.build_eval_iterator(cfg, global_batch_size=8, process_index=0,
                                         process_count=1, tokenizer=tok)))
  b = next(iter(data.build_eval_iterator(cfg, global_batch_size=8, process_index=0,
                                         process_count=1, tokenizer=tok)))
  np.testing.assert_array_equal(a["images"], b["images"])
  for text, scene in zip(a["text"], a["scene"]):
    assert data.caption_attribute_score(tok.decode(text), scene) == 1.0


def test_zero_shot_helpers(cfg):
  names = data.class_names(cfg)
  assert len(names) == 24 and names[0] == "red circle"
  assert all("{}" in t for t in data.zero_shot_templates(cfg))
  assert data.eval_dataset(cfg, "test").split == "test"


def test_config_typos_are_refused(cfg, tok):
  with pytest.raises(ValueError, match="unknown config.data fields"):
    data.build_train_iterator({"image_sise": 32}, global_batch_size=8, seed=0, process_index=0,
                              process_count=1, tokenizer=tok)
  with pytest.raises(ValueError, match="unknown dataset spec fields"):
    data.build_train_iterator({"train": {"nmae": "x"}}, global_batch_size=8, seed=0,
                              process_index=0, process_count=1, tokenizer=tok)
  with pytest.raises(ValueError, match="divisible"):
    data.build_train_iterator(cfg, global_batch_size=6, seed=0, process_index=0,
                              process_count=4, tokenizer=tok)
