"""The embedded dataset: deterministic scenes, captions that describe them, the TFDS builder,
and the caption-attribute scorer."""
import io

import numpy as np
from PIL import Image
import pytest

from coca_jax.data import embedded, shapes


def test_examples_are_deterministic_and_split_seeded():
  a, b = shapes.make_example(0, 7), shapes.make_example(0, 7)
  assert np.array_equal(a["image"], b["image"]) and a["captions"] == b["captions"]
  assert not np.array_equal(shapes.make_example(1, 7)["image"], a["image"])
  assert a["image"].shape == (64, 64, 3) and a["image"].dtype == np.uint8


def test_scenes_cover_every_class_and_layout():
  examples = [shapes.make_example(0, i) for i in range(600)]
  assert {e["label"] for e in examples} == set(range(len(shapes.CLASS_NAMES))) == set(range(24))
  counts = np.bincount([e["scene"][0] for e in examples])
  assert counts[1] > 200 and counts[2] > 200  # one and two objects
  assert {tuple(e["scene"][4:6]) for e in examples if e["scene"][0] == 1} == set(
      shapes.CELL_PHRASES)
  assert {e["scene"][11] for e in examples if e["scene"][0] == 2} == {0, 1, 2, 3}
  for e in examples:
    assert len(set(e["captions"])) == 4
    colour, shape = shapes.CLASS_NAMES[e["label"]].split()
    assert all(colour in c and shape in c for c in e["captions"])
    if e["scene"][0] == 2:  # the labelled (main) object is the larger one
      assert e["scene"][3] > e["scene"][8]


def test_pictures_show_the_described_colours():
  for i in range(40):
    e = shapes.make_example(2, i)
    pixels = e["image"].reshape(-1, 3).astype(int)
    for k in range(e["scene"][0]):
      target = np.array(list(shapes.COLOURS.values())[e["scene"][1 + 5 * k]])
      assert (np.abs(pixels - target).max(axis=1) <= 24).sum() >= 10, (i, k)


def test_every_reference_caption_scores_one():
  for i in range(300):
    e = shapes.make_example(0, i)
    for caption in e["captions"]:
      correct, described = shapes.caption_attribute_counts(caption, e["scene"])
      assert correct == described >= 3, caption


def test_scorer_counts_wrong_attributes():
  one = np.array([1, 0, 0, 2, 0, 0, -1, -1, -1, -1, -1, -1])  # large red circle, top left
  two = np.array([2, 2, 1, 2, 0, 1, 3, 3, 0, 2, 1, 0])  # large blue square left of small yellow cross
  score = shapes.caption_attribute_score
  assert score("a large red circle in the top left corner", one) == 1.0
  assert score("a large red circle in the bottom right corner", one) == 0.75
  assert score("a small green square at the top", one) == 0.0
  assert score("a red circle", one) == 1.0  # only what is described is scored
  assert score("", one) == 0.0 and score("nothing useful here", one) == 0.0
  assert score("a large blue square to the left of a small yellow cross", two) == 1.0
  assert score("a small yellow cross to the right of a large blue square", two) == 1.0
  assert score("a small yellow cross to the left of a large blue square", two) == 6 / 7
  assert score("a big blue square above a red cross", two) == 4 / 6
  # A second mention on a one-object scene is wrong in every attribute it states.
  assert score("a large red circle left of a blue square", one) == 3 / 6


def test_recall_counts_the_scene_attributes_stated():
  one = np.array([1, 0, 0, 2, 0, 0, -1, -1, -1, -1, -1, -1])  # large red circle, top left
  two = np.array([2, 2, 1, 2, 0, 1, 3, 3, 0, 2, 1, 0])  # large blue square left of small yellow cross
  recall = shapes.caption_attribute_recall
  assert recall("a large red circle in the top left corner", one) == 1.0
  assert recall("a picture of a red circle", one) == 2 / 4  # the class-name form
  assert recall("a large red circle in the bottom right corner", one) == 3 / 4
  assert recall("a large blue square to the left of a small yellow cross", two) == 1.0
  assert recall("a picture of a blue square", two) == 2 / 7
  assert recall("", two) == 0.0


@pytest.fixture(scope="module")
def small_builder(tmp_path_factory):
  return embedded.prepare(str(tmp_path_factory.mktemp("tfds")), "small")


def test_builder_generates_the_same_examples(small_builder):
  assert small_builder.info.splits["train"].num_examples == 512
  assert small_builder.info.splits["validation"].num_examples == 96
  source = small_builder.as_data_source("validation")
  found = {}
  for i in range(len(source)):
    record = source[i]
    found[tuple(record["scene"])] = record
  for index in (0, 5, 95):
    expected = shapes.make_example(embedded.SEEDS["validation"], index)
    record = found[tuple(expected["scene"])]
    assert np.array_equal(record["image"], expected["image"])
    assert [c.decode() for c in record["captions"]] == expected["captions"]
    assert record["label"] == expected["label"]
  assert small_builder.info.features["label"].names == list(shapes.CLASS_NAMES)


def test_prepare_reuses_prepared_data(small_builder, tmp_path_factory):
  again = embedded.prepare(small_builder.data_dir.split("/coca_shapes")[0], "small")
  assert again.is_prepared() and again.data_dir == small_builder.data_dir
  png = io.BytesIO()
  Image.fromarray(shapes.make_example(0, 0)["image"]).save(png, format="PNG")
  assert len(png.getvalue()) < 4000  # small files: the whole default set is about 14 MB
