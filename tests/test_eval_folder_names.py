"""Folders of class images named the way datasets name them: class indices sorted as numbers
(ImageNetV2's 0/ ... 999/), WordNet ids, class-names files; id-like names warned about."""
import json
import logging

import numpy as np
from PIL import Image
import pytest

from coca_jax import tokenizers
from coca_jax.parallel import sharding
from coca_jax.evals import build, common, imagenet
from coca_jax.data.folder import FolderSource, class_names_for, sort_classes
from test_eval_evaluators import COLOURS, ColourModel, _config

IMAGENETTE = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916",
              "n03417042", "n03425413", "n03445777", "n03888605")


def _image(path, colour=(0, 0, 255)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (20, 24), colour).save(path)


def test_numbers_sort_as_numbers():
  assert sort_classes(["10", "2", "1", "0"]) == ["0", "1", "2", "10"]
  assert sort_classes(["b10", "b2"]) == ["b10", "b2"]  # not all numbers: string order


def test_imagenet_v2_layout_takes_imagenet_names(tmp_path):
  for i in range(1000):
    (tmp_path / str(i)).mkdir()
  _image(tmp_path / "10" / "a.jpeg")
  _image(tmp_path / "2" / "b.jpeg")
  source = FolderSource(str(tmp_path))
  assert source.imagenet and source.class_names[:3] == ("0", "1", "2")
  assert source.prompt_names() == imagenet.class_names()
  assert [source.labels[i] for i in range(2)] == [2, 10]  # folder 10 is class 10, not 2
  assert source[1]["captions"] == ["a photo of a brambling."]  # ImageNet class 10


def test_wordnet_id_folders_take_imagenet_names(tmp_path, caplog):
  for wnid in IMAGENETTE:
    _image(tmp_path / wnid / "x.png")
  with caplog.at_level(logging.WARNING):
    source = FolderSource(str(tmp_path))
  assert source.imagenet
  assert source.prompt_names()[:3] == ("tench", "English Springer Spaniel", "cassette player")
  assert "look like ids" not in caplog.text


def test_given_imagenet_subset_of_indices(tmp_path):
  for i in (0, 1, 207):
    _image(tmp_path / str(i) / "x.png")
  names, is_imagenet = class_names_for(["0", "1", "207"], "imagenet")
  assert is_imagenet and names == ["tench", "goldfish", "Golden Retriever"]
  with pytest.raises(ValueError, match="ImageNet class indices 0-999 or WordNet ids"):
    class_names_for(["cat", "dog"], "imagenet")


def test_id_like_names_are_warned_with_their_count(caplog):
  with caplog.at_level(logging.WARNING):
    names, is_imagenet = class_names_for(["0", "1", "2", "10"])
  assert names == ["0", "1", "2", "10"] and not is_imagenet
  assert "4 of 4 class names look like ids" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    class_names_for(["n01440764", "n99999999", "cat"])  # one unknown WordNet id
  assert "2 of 3 class names look like ids" in caplog.text


def test_class_names_files(tmp_path):
  lines = tmp_path / "names.txt"
  lines.write_text("zero\none\ntwo\n\n")
  assert class_names_for(["2", "0"], str(lines))[0] == ["two", "zero"]  # line i names folder i
  assert class_names_for(["b", "a", "c"], str(lines))[0] == ["zero", "one", "two"]
  with pytest.raises(ValueError, match="3 names for 2 class folders"):
    class_names_for(["a", "b"], str(lines))
  with pytest.raises(ValueError, match="folders go up to 7"):
    class_names_for(["0", "7"], str(lines))
  mapping = tmp_path / "names.json"
  mapping.write_text(json.dumps({"n01": "cat", "n02": "dog"}))
  assert class_names_for(["n01", "n02"], str(mapping))[0] == ["cat", "dog"]
  with pytest.raises(ValueError, match=r"no name for 1 folder\(s\), e.g. \['n03'\]"):
    class_names_for(["n01", "n03"], str(mapping))


def test_zero_shot_on_numbered_folders_with_a_names_file(tmp_path):
  """Folders 1/, 2/, 10/ hold blue, green and red images; line i of the names file names
  folder i. String order would give folder 10 label 1: 1/3 right instead of all."""
  root, names = tmp_path / "images", tmp_path / "classes.txt"
  for folder, colour in (("1", "blue"), ("2", "green"), ("10", "red")):
    for k in range(2):
      _image(root / folder / f"{k}.png", COLOURS[colour])
  names.write_text("\n".join(["none", "blue", "green"] + ["none"] * 7 + ["red"]) + "\n")
  config = _config(zeroshot=True, batch_size=8, class_names=str(names),
                   datasets=dict(zeroshot=f"folder:{root}", retrieval="", captions=""))
  assert common.dataset_spec(config, f"folder:{root}")["class_names"] == str(names)
  tok = tokenizers.load(config.data.tokenizer)
  evaluator, = build(config, ColourModel(tok), sharding.make_mesh({"data": -1}), tok)
  assert evaluator.class_names == ("blue", "green", "red")
  assert evaluator.run({})["zeroshot/top1"] == 1.0
  assert np.isclose(evaluator.run({})["zeroshot/chance"], 1 / 3)
