"""Preprocessing: evaluation resize + centre crop + normalisation equal to open_clip's transform;
random resized crop sampled like torchvision's; tokenized text layout in batches."""
import io

import numpy as np
from PIL import Image
import pytest

from coca_jax import tokenizers
from coca_jax.data import config as data_config
from coca_jax.data import pipeline, preprocess

try:  # at collection: importing torch's triton once TensorFlow's runtime is up crashes
  import open_clip
except ImportError:
  open_clip = None


def random_image(h, w, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth content, so bicubic ringing stays small and comparisons are meaningful.
  base = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), np.uint8)
  return Image.fromarray(base).resize((w, h), Image.BILINEAR)


def test_normalizations_by_name():
  mean, std = preprocess.mean_std("openai_clip")
  np.testing.assert_allclose(mean, (0.48145466, 0.4578275, 0.40821073))
  np.testing.assert_allclose(std, (0.26862954, 0.26130258, 0.27577711))
  mean, std = preprocess.mean_std({"mean": [0.5] * 3, "std": [0.25] * 3})
  image = np.full((2, 2, 3), 255, np.uint8)
  np.testing.assert_allclose(preprocess.normalize(image, mean, std), 2.0)
  with pytest.raises(ValueError, match="unknown normalization"):
    preprocess.mean_std("nope")


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (224, 224), (50, 80), (1, 1),
                                  (1000, 225)])
def test_eval_preprocessing_equals_open_clip(size):
  if open_clip is None:
    pytest.skip("open_clip is not installed")
  image = random_image(*size)
  expected = open_clip.image_transform(224, is_train=False)(image).numpy().transpose(1, 2, 0)
  mean, std = preprocess.mean_std("openai_clip")
  got = preprocess.normalize(preprocess.preprocess_image(image, 224), mean, std)
  assert got.shape == (224, 224, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_eval_example_from_png_bytes_equals_open_clip():
  if open_clip is None:
    pytest.skip("open_clip is not installed")
  image = random_image(333, 250, seed=1)
  png = io.BytesIO()
  image.save(png, format="PNG")
  cfg = data_config.resolve({"image_size": 224, "text_length": 76})
  make = pipeline.ExampleMaker.from_config(cfg, tokenizers.load("embedded"), train=False)
  example = make({"image": png.getvalue(), "captions": ["a red circle"], "label": -1,
                  "scene": np.zeros(12, np.int32)}, None)
  expected = open_clip.image_transform(224, is_train=False)(image).numpy().transpose(1, 2, 0)
  np.testing.assert_allclose(example["images"], expected, atol=1e-5)


def test_random_resized_crop_samples_like_torchvision():
  rng = np.random.default_rng(0)
  boxes = [preprocess.crop_box(400, 300, rng, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(2000)]
  areas = np.array([w * h for _, _, w, h in boxes]) / (400 * 300)
  ratios = np.array([w / h for _, _, w, h in boxes])
  assert areas.min() >= 0.075 and areas.max() <= 1.0 and 0.35 < areas.mean() < 0.6
  assert ratios.min() >= 0.74 and ratios.max() <= 1.34
  assert all(0 <= x and 0 <= y and x + w <= 400 and y + h <= 300 for x, y, w, h in boxes)
  # Impossible ranges fall back to a centre crop at the nearest allowed ratio.
  assert preprocess.crop_box(1000, 10, rng, (0.9, 1.0), (3 / 4, 4 / 3)) == (493, 0, 13, 10)


def test_random_resized_crop_is_seeded_and_keeps_most_of_the_image():
  image = random_image(64, 64)
  a = preprocess.preprocess_image(image, 32, np.random.default_rng(5))
  b = preprocess.preprocess_image(image, 32, np.random.default_rng(5))
  c = preprocess.preprocess_image(image, 32, np.random.default_rng(6))
  assert a.shape == (32, 32, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
  whole = preprocess.preprocess_image(image, 32)
  assert np.abs(a.astype(int) - whole).mean() < 40  # scale (0.9, 1): close to the whole


def test_texts_in_examples_are_start_caption_end_padding():
  tok = tokenizers.load("embedded")
  cfg = data_config.resolve({})
  make = pipeline.ExampleMaker.from_config(cfg, tok, train=True)
  record = {"image": np.zeros((40, 30, 3), np.uint8), "captions": ["a red circle " * 20],
            "label": 3, "scene": np.zeros(12, np.int32)}
  text = make(record, np.random.default_rng(0))["text"]
  assert text.shape == (24,) and text[0] == tok.bos_id and text[-1] == tok.eos_id
  record["captions"] = ["a red circle"]
  text = make(record, np.random.default_rng(0))["text"]
  assert text.tolist()[:5] == [tok.bos_id, *tok.tokenize("a red circle"), tok.eos_id]
  assert (text[5:] == tok.pad_id).all()


def test_mean_and_std_fields_take_precedence():
  tok = tokenizers.load("embedded")
  config = data_config.default_config()
  config.mean, config.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # None fields take any value
  make = pipeline.ExampleMaker.from_config(data_config.resolve(config), tok, train=False)
  record = {"image": np.full((8, 8, 3), 255, np.uint8), "captions": ["x"], "label": -1,
            "scene": np.zeros(12, np.int32)}
  np.testing.assert_allclose(make(record, None)["images"], 2.0)
