"""The shipped ImageNet prompts: CLIP's 1000 curated class names and 80 templates, and which
datasets get them."""
import pytest

from coca_jax.evals import imagenet


def test_clip_imagenet_class_names_and_templates():
  names, templates = imagenet.class_names(), imagenet.templates()
  assert len(names) == 1000 and len(templates) == 80
  assert names[:3] == ("tench", "goldfish", "great white shark")
  assert names[65] == "sea snake" and names[999] == "toilet paper"
  assert templates[0] == "a bad photo of a {}." and "a photo of a {}." in templates
  assert all(t.count("{}") == 1 for t in templates)


def test_lists_equal_open_clip_s():
  metadata = pytest.importorskip("open_clip.zero_shot_metadata")
  assert imagenet.class_names() == tuple(metadata.IMAGENET_CLASSNAMES)
  assert imagenet.templates() == tuple(t("{}") for t in metadata.OPENAI_IMAGENET_TEMPLATES)


def test_which_datasets_are_imagenet():
  assert imagenet.is_imagenet("imagenet2012")
  assert imagenet.is_imagenet("imagenet_v2/matched-frequency")
  assert imagenet.is_imagenet("my_copy", [f"n{i:08d}" for i in range(1000)])
  assert not imagenet.is_imagenet("cifar10", ["airplane", "automobile"])
  assert not imagenet.is_imagenet("coca_shapes")
