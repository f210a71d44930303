"""Params that do not fit the model are named with both shapes, and position tables come with
how to make them fit (pretraining's init_from and the classifier's encoder loading alike)."""
import copy

import flax.linen as nn
import pytest

from coca_jax.model import adapt
from coca_jax.train import classify
from coca_jax.train import pretrain
from coca_jax.tools.summary import abstract_params
from train_fixtures import micro_config, random_micro_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  directory = tmp_path_factory.mktemp("export")
  random_micro_export(directory)
  return str(directory)


def longer_context(config, extra=8):
  config = copy.deepcopy(config)
  length = config.model.text.context_length
  config.model.text.context_length = length + extra
  config.data.text_length = length + extra
  return config, length


def test_init_from_a_shorter_text_context_names_the_table_and_shapes(export):
  config, length = longer_context(micro_config())
  config.init_from = export
  width = config.model.text.width
  with pytest.raises(ValueError) as info:
    pretrain.params_from_init_from(config, nn.unbox(abstract_params(config.model)))
  message = str(info.value)
  assert f"text/pos_embedding ({length + 1}, {width}) vs ({length + 9}, {width})" in message
  assert "1 difference(s)" in message and "different architecture" not in message
  assert "How to fit text/pos_embedding" in message and "context_length" in message


def test_classifier_encoder_names_the_param_and_shapes(export):
  config = micro_config()
  config.init_from = export
  patch = config.model.vision.patch_size
  config.model.vision.width *= 2  # another encoder width: every visual param differs
  params = {"visual": nn.unbox(abstract_params(config.model))["visual"]}
  with pytest.raises(ValueError, match=r"visual/patch_embed/kernel \(" + str(patch)):
    classify._encoder_from(config, params, ("visual",))  # pylint: disable=protected-access


def test_missing_and_unexpected_paths():
  lines = adapt.param_differences({"a": {"b": [1, 2]}, "x": [0]},
                                       {"a": {"b": [1, 2, 3]}, "y": [0, 0]})
  assert lines == ["a/b (2,) vs (3,) (checkpoint vs model)",
                   "x: in the checkpoint (1,), not in this model",
                   "y: missing from the checkpoint (model wants (2,))"]
  with pytest.raises(ValueError, match="How to fit visual/pos_embedding.*square"):
    adapt.check_params_fit({"visual": {"pos_embedding": [[0.0]]}},
                                {"visual": {"pos_embedding": [[0.0], [1.0]]}}, "here")
