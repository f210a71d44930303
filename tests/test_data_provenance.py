"""A prepared dataset matches its source: an ImageNet tar cut short is refused naming it, a
prepared split is compared with its archive's members and with the size TFDS documents, and a
prepared copy whose files changed is refused (never reused or rebuilt silently) until it is
prepared again on request; people's own files alike."""
import os
import pathlib
import tarfile

import pytest
import tensorflow_datasets as tfds

from coca_jax.data import local, provenance
from coca_jax.evals import manual
from test_eval_cli import NUM_VAL, _add, _jpeg, make_imagenet_manual_dir
from test_data_formats import write_images

import numpy as np


def val_labels():
  labels_dir = pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012"
  return (labels_dir / "validation_labels.txt").read_text().split()[:NUM_VAL + 1]


def test_cut_tar_is_refused_naming_it(tmp_path):
  make_imagenet_manual_dir(tmp_path / "manual", val_labels())
  tar = tmp_path / "manual" / "ILSVRC2012_img_val.tar"
  with tarfile.open(tar) as archive:
    last = archive.getmembers()[-1]
  tar.write_bytes(tar.read_bytes()[:last.offset_data + last.size // 2])  # inside the last image
  with pytest.raises(ValueError, match=r"ILSVRC2012_img_val.tar is (cut short|unreadable)"):
    manual.prepare("imagenet2012", str(tmp_path / "tfds"), str(tmp_path / "manual"))
  assert not tfds.builder("imagenet2012", data_dir=str(tmp_path / "tfds")).is_prepared()


def test_changed_manual_files_are_refused_until_prepared_again(tmp_path, capsys):
  root = tmp_path / "manual"
  make_imagenet_manual_dir(root, val_labels())
  builder = manual.prepare("imagenet2012", str(tmp_path / "tfds"), str(root))
  assert builder.info.splits["validation"].num_examples == NUM_VAL
  assert "validation: 6 examples, the TFDS catalog documents 50,000" in capsys.readouterr().out
  manual.prepare("imagenet2012", str(tmp_path / "tfds"), str(root))  # unchanged: reused
  # The complete tar arrives later: one more image.
  with tarfile.open(root / "ILSVRC2012_img_val.tar", "a") as tar:
    _add(tar, f"ILSVRC2012_val_{NUM_VAL + 1:08d}.JPEG", _jpeg(np.random.default_rng(9)))
  # (A tar keeps its padded size when a small member is added: the time tells the change.)
  os.utime(root / "ILSVRC2012_img_val.tar", (1, 1))
  with pytest.raises(ValueError, match=r"(?s)ILSVRC2012_img_val.tar: size .* -> .*reprepare"):
    manual.prepare("imagenet2012", str(tmp_path / "tfds"), str(root))
  builder = manual.prepare("imagenet2012", str(tmp_path / "tfds"), str(root), reprepare=True)
  assert builder.info.splits["validation"].num_examples == NUM_VAL + 1


def test_a_split_short_of_its_archive_is_refused_and_removed(tmp_path, monkeypatch):
  root = tmp_path / "manual"
  make_imagenet_manual_dir(root, val_labels())
  monkeypatch.setattr(manual, "archive_members", lambda path: (NUM_VAL + 3, None))
  with pytest.raises(ValueError, match=r"lacks examples \(validation: 6 examples from the 9 "
                                       r"files of .*ILSVRC2012_img_val.tar"):
    manual.prepare("imagenet2012", str(tmp_path / "tfds"), str(root))
  assert not tfds.builder("imagenet2012", data_dir=str(tmp_path / "tfds")).is_prepared()


def test_own_files_changed_since_preparation(tmp_path, caplog):
  write_images(tmp_path, 4)
  table = tmp_path / "pairs.csv"
  table.write_text("filepath,title\n" + "".join(f"images/{i:03d}.jpg,cat {i}\n" for i in range(3)))
  spec = dict(name="mine", format="csv", path=str(table))
  data_dir = str(tmp_path / "tfds")
  builder = local.prepare(spec, data_dir)
  assert local.prepare(spec, data_dir).info.splits["train"].num_examples == 3  # reused
  with open(table, "a") as f:
    f.write("images/003.jpg,cat 3\n")
  os.utime(table, (1, 1))
  with pytest.raises(ValueError, match=r"(?s)pairs.csv: size \d+ -> \d+ bytes.*reprepare"):
    local.prepare(spec, data_dir)
  assert local.prepare(spec, data_dir, reprepare=True).info.splits["train"].num_examples == 4
  # A copy prepared before inputs were recorded is used, with a warning.
  (pathlib.Path(builder.data_dir) / provenance.FILE).unlink()
  with caplog.at_level("WARNING"):
    local.prepare(spec, data_dir)
  assert "before its inputs were recorded" in caplog.text
