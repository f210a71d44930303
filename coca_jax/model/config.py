"""The model's configuration: frozen dataclasses built from an ml_collections / dict config.

Frozen dataclasses (not ConfigDicts) are what the Flax modules hold: they are hashable, typed,
and validated once, so a wrong field fails here with its name instead of deep inside XLA.
"""
import dataclasses
import math
from typing import Any, Mapping, Optional

POOLER_LAYOUTS = ("cascade", "parallel", "single")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")


POS_EMBEDDING_INITS = ("normal", "sincos2d")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """The ViT image encoder. Defaults: ViT-B/16 at 224 px, CoCa-Base's encoder size (paper
  Table 1; the paper pretrains at 288 px with 18 px patches)."""
  image_size: int = 224
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  class_token: bool = False  # open_clip: True (a CLIP-style ViT)
  pre_norm: bool = False  # open_clip: True (ln_pre before the blocks)
  patch_bias: bool = True  # open_clip: False (conv1 has no bias)
  # The learned position embedding starts as "normal" (std width**-0.5, as open_clip) or as
  # "sincos2d", the 2-D sine-cosine table (MAE, big_vision), then trained: half the width
  # encodes the column, half the row, and neighbouring patches start out alike.
  pos_embedding_init: str = "normal"

  @property
  def num_patches(self) -> int:
    """Patch tokens, (image_size // patch_size) ** 2; the class token not counted."""
    return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class PoolerConfig:
  """The attentional poolers (paper section 3): learned queries, one attention layer, no MLP.
  Their width is `ModelConfig.embed_dim`."""
  layout: str = "cascade"  # cascade | parallel (paper) | single (open_clip)
  num_queries: int = 256  # generative pooler queries (single layout: all queries, 0 = embedding)
  num_heads: int = 8
  # Not in the paper or open_clip (0 = off): a fixed 2-D sine-cosine position table times this
  # scale, added to the image tokens the generative pooler attends over (model/pooler.py:
  # pooler_positions), so that the captioner can say where things are without a strong
  # position signal inside the ViT, which slows the learning of what they are (configs/tiny.py).
  pos_embedding_scale: float = 0.0


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The unimodal text decoder: token embeddings, learned positions, CLS appended last."""
  vocab_size: int = 64000
  context_length: int = 76  # text tokens; the position table has one more row, for CLS
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pad_id: int = 0
  eos_id: Optional[int] = None  # tokens after the first end token are padding (paper layout)
  # open_clip's published weights shift the CLS row's padding mask right by one position.
  legacy_cls_mask: bool = False


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """The multimodal decoder: causal self-attention, cross-attention to the image, MLP."""
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  # The paper's layer has one MLP (after cross-attention); open_clip's has another after
  # self-attention too.
  mlp_after_self_attention: bool = False
  tie_embeddings: bool = False  # output projection = token embedding transposed


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The whole model: its sections, the shared settings, and how it computes (dtype, scanned
  layers, remat, chunked caption loss). Build it with `from_dict`, which validates it."""
  vision: VisionConfig = VisionConfig()
  pooler: PoolerConfig = PoolerConfig()
  text: TextConfig = TextConfig()
  decoder: DecoderConfig = DecoderConfig()
  embed_dim: int = 768  # contrastive embedding width; also the poolers' width
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  exact_gelu: bool = True
  logit_scale_init: float = math.log(1 / 0.07)
  max_logit_scale: float = 100.0
  dtype: str = "float32"  # compute dtype; params are always float32
  scan_layers: bool = False
  remat_policy: str = "none"
  # > 0: training outputs carry the decoder's final states in this many sequence chunks, and
  # the caption loss makes each chunk's vocabulary logits itself, again in the backward pass,
  # instead of keeping (batch, length, vocab) logits alive (their largest activation): less
  # memory for one more vocabulary projection (about 2% of coca_base's training FLOPs).
  caption_loss_chunks: int = 0
  dropout_rate: float = 0.0
  attention_impl: Optional[str] = None  # jax.nn.dot_product_attention(implementation=...)

  @property
  def decoder_width(self) -> int:
    """The multimodal decoder's width: the unimodal text width, whose states it continues."""
    return self.text.width

  @property
  def num_image_tokens(self) -> int:
    """Tokens the multimodal decoder cross-attends to."""
    if self.pooler.layout == "single":
      return self.pooler.num_queries - 1
    return self.pooler.num_queries


def _check(cond: bool, field: str, message: str):
  if not cond:
    raise ValueError(f"model config: {field}: {message}")


def _build(cls, values: Mapping[str, Any], prefix: str):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"model config: unknown field(s) {', '.join(prefix + u for u in unknown)}; "
                     f"{prefix.rstrip('.') or 'model'} takes {sorted(names)}")
  return cls(**values)


def from_dict(config: Any) -> ModelConfig:
  """Builds a validated ModelConfig from a ModelConfig, a ConfigDict or a nested dict."""
  if isinstance(config, ModelConfig):
    cfg = config
  else:
    if hasattr(config, "to_dict"):
      config = config.to_dict()
    config = dict(config)
    subs = {"vision": VisionConfig, "pooler": PoolerConfig, "text": TextConfig,
            "decoder": DecoderConfig}
    for key, cls in subs.items():
      if key in config:
        config[key] = _build(cls, dict(config[key]), key + ".")
    cfg = _build(ModelConfig, config, "")
  validate(cfg)
  return cfg


def validate(cfg: ModelConfig) -> None:
  """Checks fields against each other (divisible widths, ids in the vocabulary, known enum
  values).

  Raises:
    ValueError: the first failed check, naming its field ("model config: FIELD: ...").
  """
  v, p, t, d = cfg.vision, cfg.pooler, cfg.text, cfg.decoder
  _check(v.image_size % v.patch_size == 0, "vision.image_size",
         f"{v.image_size} is not a multiple of vision.patch_size {v.patch_size}")
  _check(v.pos_embedding_init in POS_EMBEDDING_INITS, "vision.pos_embedding_init",
         f"{v.pos_embedding_init!r} is not one of {POS_EMBEDDING_INITS}")
  _check(v.pos_embedding_init != "sincos2d" or v.width % 4 == 0, "vision.width",
         f"{v.width} is not a multiple of 4, which the sincos2d position table needs")
  _check(v.width % v.num_heads == 0, "vision.num_heads",
         f"{v.num_heads} heads do not divide vision.width {v.width}")
  _check(cfg.embed_dim % p.num_heads == 0, "pooler.num_heads",
         f"{p.num_heads} heads do not divide embed_dim {cfg.embed_dim}")
  _check(p.layout in POOLER_LAYOUTS, "pooler.layout", f"{p.layout!r} not in {POOLER_LAYOUTS}")
  _check(math.isfinite(p.pos_embedding_scale) and p.pos_embedding_scale >= 0,
         "pooler.pos_embedding_scale", f"{p.pos_embedding_scale} is not a finite number >= 0")
  _check(not p.pos_embedding_scale or v.width % 4 == 0, "vision.width",
         f"{v.width} is not a multiple of 4, which pooler.pos_embedding_scale's table needs")
  _check(p.num_queries >= (2 if p.layout == "single" else 1), "pooler.num_queries",
         f"{p.num_queries} is too few for the {p.layout} layout")
  _check(t.width % t.num_heads == 0, "text.num_heads",
         f"{t.num_heads} heads do not divide text.width {t.width}")
  _check(t.width % d.num_heads == 0, "decoder.num_heads",
         f"{d.num_heads} heads do not divide the decoder width (text.width) {t.width}")
  _check(0 <= t.pad_id < t.vocab_size, "text.pad_id", f"{t.pad_id} outside the vocabulary")
  _check(t.eos_id is None or 0 <= t.eos_id < t.vocab_size, "text.eos_id",
         f"{t.eos_id} outside the vocabulary")
  # The decoder cross-attends to the poolers' outputs, which are embed_dim wide.
  _check(cfg.embed_dim == t.width, "embed_dim",
         f"{cfg.embed_dim} must equal text.width {t.width}: the multimodal decoder "
         "cross-attends to the pooled image tokens, which are embed_dim wide")
  _check(cfg.dtype in DTYPES, "dtype", f"{cfg.dtype!r} not in {DTYPES}")
  _check(cfg.remat_policy in REMAT_POLICIES, "remat_policy",
         f"{cfg.remat_policy!r} not in {REMAT_POLICIES}")
  _check(0.0 <= cfg.dropout_rate < 1.0, "dropout_rate", f"{cfg.dropout_rate} not in [0, 1)")
  _check(cfg.max_logit_scale > 0, "max_logit_scale", "must be positive")
