"""webdataset shards as people make them: samples keyed by webdataset's rule (directory
included), parts seen twice, unordered members; streamed reads that resume exactly at every
position of a shard, or refuse when the shard list changed."""
import io
import tarfile
import types

import numpy as np
import pytest

from coca_jax import data, tokenizers
from coca_jax.data import formats, local, streams
from test_data_formats import all_captions, base_config, caption, picture, stream_batches


def write_tar(path, members):
  """members: (name, bytes) in this order."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, "w") as tar:
    for name, payload in members:
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return str(path)


def sample(key, i):
  return [(f"{key}.jpg", picture(i)), (f"{key}.txt", caption(i).encode())]


@pytest.fixture(scope="module")
def tok():
  return tokenizers.load("embedded")


def test_sample_key_is_webdataset_rule():
  assert formats.sample_key("setA/0001.jpg") == ("setA/0001", "jpg")
  assert formats.sample_key("a/b.c/0001.seg.png") == ("a/b.c/0001", "seg.png")
  assert formats.sample_key("0001.JPG") == ("0001", "jpg")
  assert formats.sample_key("README") == (None, None)


def test_repeated_file_names_in_folders_are_separate_samples(tmp_path, tok):
  """Folders tarred together: setA/0001 and setB/0001 are two samples (1.0.0 kept 3 of 4)."""
  path = write_tar(tmp_path / "shards" / "00000.tar",
                   sample("setA/0001", 0) + sample("setA/0002", 1) + sample("setB/0001", 2)
                   + sample("setB/0002", 3))
  spec = dict(name="folders", format="webdataset", path=path, split="train")
  builder = local.prepare(spec, str(tmp_path / "tfds"))
  assert local.bad_record_report(builder)["train"] == {"kept": 4, "captions": 4, "dropped": 0}
  got = all_captions(base_config(tmp_path), tok, dict(format="tfds", path=builder.data_dir,
                                                      split="train"))
  assert sorted(got) == sorted(caption(i) for i in range(4))
  cfg = {**base_config(tmp_path), "train": dict(name="web", format="webdataset", path=path,
                                                stream=True)}
  (batch,), _ = stream_batches(cfg, tok, 1, 1, batch=4)
  assert sorted(batch) == sorted(caption(i) for i in range(4))


def test_a_part_seen_twice_is_a_counted_bad_record(tmp_path):
  path = write_tar(tmp_path / "00000.tar", sample("a", 0) + sample("b", 1)
                   + [("b.jpg", picture(5))] + sample("c", 2))
  raws = list(formats.read_file(path, "webdataset"))
  assert [r.get("error") for r in raws] == [None, "record_duplicate_part", None]
  builder = local.prepare(dict(name="dup", format="webdataset", path=path, split="train"),
                          str(tmp_path / "tfds"))
  assert local.bad_record_report(builder)["train"] == {
      "kept": 2, "captions": 2, "dropped": 1, "record_duplicate_part": 1}


def unordered_shard(path, keys):
  return write_tar(path, [(f"{k}.jpg", picture(i)) for i, k in enumerate(keys)]
                   + [(f"{k}.txt", caption(i).encode()) for i, k in enumerate(keys)])


def test_unordered_shard_is_refused_at_conversion_naming_it(tmp_path):
  path = unordered_shard(tmp_path / "00007.tar", ["k0", "k1", "k2"])
  with pytest.raises(Exception) as info:
    local.prepare(dict(name="unordered", format="webdataset", path=path, split="train"),
                  str(tmp_path / "tfds"))
  message = str(info.value)
  assert "00007.tar" in message and "'k0' came back" in message, message
  assert "tar --sort=name" in message
  assert "No examples were yielded" not in message


def test_unordered_shard_is_counted_when_streamed(tmp_path, tok, caplog):
  good = write_tar(tmp_path / "shards" / "00000.tar", sample("g0", 0) + sample("g1", 1))
  unordered_shard(tmp_path / "shards" / "00001.tar", ["u0", "u1"])
  cfg = {**base_config(tmp_path), "train": dict(
      name="web", format="webdataset", path=good.replace("00000", "{00000..00001}"),
      stream=True)}
  with caplog.at_level("WARNING"):
    batches, (it,) = stream_batches(cfg, tok, 1, 2, batch=2)
  assert all(t in (caption(0), caption(1)) for b in batches for t in b)
  assert it.stats()["bad_records/shard_unordered"] >= 1
  assert "shard_unordered" in caplog.text and "00001.tar: key 'u0' came back" in caplog.text


def test_all_bad_stream_error_lists_reasons(tmp_path, tok):
  path = unordered_shard(tmp_path / "shards" / "00000.tar", ["u0", "u1", "u2"])
  cfg = {**base_config(tmp_path), "train": dict(name="web", format="webdataset", path=path,
                                                stream=True)}
  with pytest.raises(RuntimeError, match=r"bad records in a row.*shard_unordered: \d+ \(.*"
                                         r"00000.tar: key 'u0' came back"):
    stream_batches(cfg, tok, 1, 1, batch=2)


def test_every_record_dropped_shows_the_report(tmp_path):
  (tmp_path / "rows.csv").write_text("filepath,title\nmissing1.jpg,a cat\nmissing2.jpg,a dog\n")
  with pytest.raises(Exception, match=r"every record of .* was dropped: .*image_missing\": 2"):
    local.prepare(dict(name="gone", format="csv", path=str(tmp_path / "rows.csv"),
                       split="train"), str(tmp_path / "tfds"))


# --- streamed resume ------------------------------------------------------------------------

def reader(paths_spec, window, seed=3):
  spec = types.SimpleNamespace(name="web", path=paths_spec, format="webdataset", image_key=None,
                               text_key=None, separator=None)
  return streams.ShardReader(spec, seed, 0, 1, window=window)


def keys(r, n):
  return [r.next().get("captions", ["?"])[0] for _ in range(n)]


@pytest.mark.parametrize("window", [3, 7, 10])
def test_stream_resumes_at_every_position_of_short_shards(tmp_path, window):
  """Shards of 7 and 5 records, windows that do not divide them: a resume after any number of
  records (the end of a shard included, which raised IndexError) continues as the run did."""
  root = tmp_path / "shards"
  write_tar(root / "00000.tar", sum((sample(f"a{i}", i) for i in range(7)), []))
  write_tar(root / "00001.tar", sum((sample(f"b{i}", 7 + i) for i in range(5)), []))
  spec = str(root / "{00000..00001}.tar")
  total = 3 * 12
  straight = keys(reader(spec, window), total + 4)
  assert sorted(straight[:12]) == sorted(caption(i).encode() for i in range(12))
  for position in range(total):
    first = reader(spec, window)
    keys(first, position)
    resumed = reader(spec, window)
    resumed.set_state(first.get_state())
    assert keys(resumed, 4) == straight[position:position + 4], position


def test_stream_resume_refuses_a_changed_shard_list_or_window(tmp_path):
  root = tmp_path / "shards"
  for s in range(3):
    write_tar(root / f"0000{s}.tar", sample(f"s{s}", s))
  r = reader(str(root), 2)
  keys(r, 2)
  state = r.get_state()
  with pytest.raises(ValueError, match=r"shards 3 -> 4.*Restore the shards"):
    write_tar(root / "00003.tar", sample("s3", 3))
    reader(str(root), 2).set_state(state)
  (root / "00003.tar").unlink()
  with pytest.raises(ValueError, match=r"window 2 -> 4"):
    reader(str(root), 4).set_state(state)
  old = {"visits": state["visits"], "done": state["done"]}  # saved before the pinning
  reader(str(root), 2).set_state(old)
  np.testing.assert_equal(len(formats.expand_paths(str(root), "webdataset")), 3)
  assert data  # the package's own data module imports
