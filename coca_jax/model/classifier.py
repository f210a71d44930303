"""An image classifier on CoCa's image encoder: probes on frozen features and fine-tuning.

Its params reuse CoCa's names for the encoder ("visual", and "pooling" when the CoCa image
embedding is the feature), so a CoCa checkpoint's subtrees drop in as they are; the new parts
are "probe_pooler" / "probe_norm" (attentive features) and "head".

`features`:
  "embedding"     CoCa's image embedding (contrastive pooler output, projected; unnormalised)
  "encoder_mean"  the encoder's output tokens, averaged
  "attentive"     a fresh attentional pooler (one query) over the encoder's tokens, then a
                  layer norm: the paper's frozen-encoder protocol
"""
import flax.linen as nn
import jax.numpy as jnp

from coca_jax.model import partitioning as P
from coca_jax.model.blocks import layer_norm
from coca_jax.model.config import ModelConfig
from coca_jax.model.pooler import AttentionalPooler, ImagePooling
from coca_jax.model.vit import VisionTransformer

FEATURES = ("embedding", "encoder_mean", "attentive")


class ClassifierHead(nn.Module):
  """features -> logits: an optional hidden layer (GELU), then a zero-initialised linear layer
  (every class starts equally likely)."""
  num_classes: int
  hidden_dim: int = 0
  dropout_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    if self.hidden_dim:
      x = nn.gelu(nn.Dense(self.hidden_dim, name="hidden",
                           kernel_init=P.param_init(nn.initializers.lecun_normal(),
                                                    ("embed", "mlp")),
                           bias_init=P.param_init(nn.initializers.zeros, ("mlp",)))(x))
    x = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)(x)
    return nn.Dense(self.num_classes, name="out",
                    kernel_init=P.param_init(nn.initializers.zeros, ("embed", None)),
                    bias_init=P.param_init(nn.initializers.zeros, (None,)))(x)


class ImageClassifier(nn.Module):
  """images (B, H, W, 3), normalised -> float32 logits (B, num_classes)."""
  cfg: ModelConfig
  num_classes: int
  features: str = "embedding"
  hidden_dim: int = 0
  head_dropout: float = 0.0
  deterministic: bool = True
  with_head: bool = True  # False: the features the head takes (a probe's feature cache)

  @nn.compact
  def __call__(self, images):
    if self.features not in FEATURES:
      raise ValueError(f"config.classify.features: {self.features!r} is not one of {FEATURES}")
    tokens = VisionTransformer(self.cfg, self.deterministic, name="visual")(images)
    if self.features == "embedding":
      x, _ = ImagePooling(self.cfg, name="pooling")(tokens)
    elif self.features == "encoder_mean":
      x = tokens.astype(jnp.float32).mean(axis=1)
    else:
      x = AttentionalPooler(self.cfg, 1, name="probe_pooler")(tokens)[:, 0]
      x = layer_norm(self.cfg, "probe_norm")(x)
    return head_of(self, name="head")(x) if self.with_head else x

  def encoder_names(self):
    """Top-level param names that come from a CoCa checkpoint."""
    return ("visual", "pooling") if self.features == "embedding" else ("visual",)


def head_of(model: ImageClassifier, name=None) -> ClassifierHead:
  """The classifier's head alone: apply it with params["head"] to cached features."""
  return ClassifierHead(model.num_classes, model.hidden_dim, model.head_dropout,
                        model.deterministic, name=name)
