"""Frozen-encoder probes through train.py's `train_and_evaluate`: the encoder's params stay
bitwise what was loaded, with no optimizer state, and a trained encoder's features beat a random
encoder's by a wide margin on the embedded dataset's labels. The linear probe's feature cache
holds the encoder's features of every train image, is read back rather than recomputed when a
run resumes, and the resumed run ends bitwise where an uninterrupted one does."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coca_jax import tokenizers
from coca_jax import checkpoints
from coca_jax.train import feature_cache
from coca_jax.train import freeze
from coca_jax.train import optim
from coca_jax.train import config as train_config
from coca_jax.model.classifier import ImageClassifier
from coca_jax.data import labels as labels_lib
from coca_jax.evals import evaluate
from coca_jax.train import train_and_evaluate
from train_fixtures import (checkpoint_tree, load_config, pretrain_micro,
                            random_micro_export)

PROBE_STEPS = 100


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
  root = tmp_path_factory.mktemp("encoders")
  return {"trained": pretrain_micro(root / "pretrained"),
          "random": random_micro_export(root / "random")}


def probe_config(name, init_from, steps=PROBE_STEPS, **classify):
  config = load_config(name)
  config.init_from = str(init_from)
  config.classify.update(classify)
  config.num_train_steps = steps
  config.global_batch_size = 64
  config.log_every_steps = PROBE_STEPS
  config.checkpoint.async_save = False
  config.data.num_threads = 1
  config.data.eval.split = "validation[:500]"
  return config


def probe(name, init_from, workdir, **classify):
  return train_and_evaluate(probe_config(name, init_from, **classify), str(workdir))


def assert_encoder_frozen(workdir, init_from, encoder_names, trained_names):
  saved = checkpoint_tree(workdir)
  loaded, _ = checkpoints.load_params(init_from)
  for name in encoder_names:
    same = jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b),
                        saved["params"][name], loaded[name])
    assert all(jax.tree.leaves(same)), name
  # Optimizer state exists for the trained parts only.
  paths = [p for p in saved["opt_state_paths"] if "count" not in p]
  assert paths and all(any(f"['{t}']" in p for t in trained_names) for p in paths), paths
  assert not any(f"['{n}']" in p for n in encoder_names for p in paths)


def test_linear_probe_keeps_the_encoder_and_beats_a_random_encoder(encoders, tmp_path):
  trained = probe("probe_linear", encoders["trained"], tmp_path / "trained")
  random = probe("probe_linear", encoders["random"], tmp_path / "random")
  assert_encoder_frozen(tmp_path / "trained", encoders["trained"], ("visual", "pooling"),
                        ("head",))
  assert trained["classify/examples"] == random["classify/examples"] == 500
  # eval.py on a probe's workdir says what it holds instead of failing on param shapes.
  with pytest.raises(ValueError, match="holds an image classifier"):
    evaluate.evaluate(probe_config("probe_linear", encoders["trained"]), str(tmp_path / "random"))
  # Measured on the whole validation split: 32.8% against 14.6% (chance 4.2%).
  assert trained["classify/top1"] > random["classify/top1"] + 0.1, (trained, random)
  assert trained["classify/top1"] > 1.5 * random["classify/top1"], (trained, random)


def test_feature_cache_holds_the_encoders_features_and_resumes_exactly(encoders, tmp_path,
                                                                      monkeypatch):
  config = probe_config("probe_linear", encoders["trained"], steps=12)
  config.data.train.split = "train[:200]"  # not a multiple of the batch: epochs straddle
  config.checkpoint.every_steps = 6
  whole = train_and_evaluate(config, str(tmp_path / "whole"))
  features, labels = feature_cache.load(tmp_path / "whole", json_key(tmp_path / "whole"))
  assert features.shape == (200, 32) and labels.shape == (200,)
  # The cache is the encoder's output on the train images, in the split's order.
  params, model_cfg = checkpoints.load_params(encoders["trained"])
  encoder = ImageClassifier(model_cfg, 24, "embedding", with_head=False)
  data = train_config.resolve(config).data
  first = next(iter(labels_lib.build_eval_iterator(
      data, "label", global_batch_size=16, process_index=0, process_count=1,
      tokenizer=tokenizers.load(config.data.tokenizer), dataset=config.data.train)))
  expected = encoder.apply({"params": {k: params[k] for k in ("visual", "pooling")}},
                           jnp.asarray(first["images"]))
  np.testing.assert_allclose(features[:16], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(labels[:16], first["label"])
  # Killed after step 6: the resumed run reads the cache (computing it again would fail here)
  # and ends where the uninterrupted run ended.
  shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "12")
  monkeypatch.setattr(feature_cache, "compute", _no_compute)
  resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed == whole
  a = checkpoint_tree(tmp_path / "whole")["params"]["head"]
  b = checkpoint_tree(tmp_path / "resumed")["params"]["head"]
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def _no_compute(*args, **kwargs):
  raise AssertionError("the feature cache was computed again")


def json_key(workdir):
  return json.loads((workdir / feature_cache.DIRNAME / "key.json").read_text())


def test_attentive_probe_trains_a_fresh_pooler_on_the_frozen_encoder(encoders, tmp_path):
  result = probe("probe_attentive", encoders["trained"], tmp_path / "probe", label="size")
  assert_encoder_frozen(tmp_path / "probe", encoders["trained"], ("visual",),
                        ("head", "probe_pooler", "probe_norm"))
  params = checkpoint_tree(tmp_path / "probe")["params"]
  assert "pooling" not in params and "probe_pooler" in params
  assert result["classify/top1"] > 1 / 3 + 0.1  # 3 sizes


def test_freeze_splits_by_path_prefix_and_refuses_unknown_names():
  params = {"visual": {"a": np.ones(2)}, "pooling": {"proj": np.ones(3),
                                                     "proj_extra": np.ones(1)}, "head": {}}
  trainable, frozen = freeze.split(params, ["pooling/proj", "visual"])
  assert set(frozen) == {"visual", "pooling"} and set(frozen["pooling"]) == {"proj"}
  assert trainable == {"pooling": {"proj_extra": params["pooling"]["proj_extra"]}}
  assert freeze.merge(trainable, frozen)["pooling"].keys() == params["pooling"].keys()
  with pytest.raises(ValueError, match="'vision'"):
    freeze.split(params, ["vision"])


@pytest.mark.parametrize("scanned", [False, True])
def test_layer_decay_scales_each_encoder_layer(scanned):
  depth, decay = 3, 0.5
  ones = lambda *shape: np.ones(shape, np.float32)  # noqa: E731
  layers = ({"layers": {"w": ones(depth, 2, 2)}} if scanned
            else {f"layers_{i}": {"w": ones(2, 2)} for i in range(depth)})
  params = {"visual": {"patch_embed": {"kernel": ones(2, 2)}, **layers},
            "head": {"out": {"kernel": ones(2, 2)}}}
  scales = optim.layer_scales(params, decay)
  assert float(scales["visual"]["patch_embed"]["kernel"]) == decay ** 4
  assert float(scales["head"]["out"]["kernel"]) == 1.0
  per_layer = (np.asarray(scales["visual"]["layers"]["w"]).ravel() if scanned
               else [float(scales["visual"][f"layers_{i}"]["w"]) for i in range(depth)])
  np.testing.assert_allclose(per_layer, [decay ** 3, decay ** 2, decay])
  # The transform multiplies updates by those factors, broadcast along the layer axis.
  tx = optim.scale_by_layer(params, decay)
  updates, _ = tx.update(params, tx.init(params))
  got = updates["visual"]["layers"]["w"][:, 0, 0] if scanned else [
      updates["visual"][f"layers_{i}"]["w"][0, 0] for i in range(depth)]
  np.testing.assert_allclose(got, [decay ** 3, decay ** 2, decay])


@pytest.mark.parametrize("change, field", [
    (lambda c: c.classify.update(features="cls"), "classify.features"),
    (lambda c: c.classify.update(label="area"), "classify.label"),
    (lambda c: c.classify.update(label_smoothing=1.0), "classify.label_smoothing"),
    (lambda c: c.classify.update(hidden_dim=-1), "classify.hidden_dim"),
    (lambda c: setattr(c, "init_from", ""), "init_from"),
    (lambda c: c.classify.update(features="attentive"), "classify.cache_features"),
    (lambda c: c.data.update(crop="random_resized_crop"), "classify.cache_features"),
])
def test_bad_probe_configs_are_refused_naming_the_field(change, field):
  from coca_jax.train import classify  # pylint: disable=import-outside-toplevel
  config = load_config("probe_linear")
  config.init_from = "/some/checkpoint"
  change(config)
  with pytest.raises(ValueError, match=r"config\." + field.replace(".", r"\.")):
    classify.check(config)
