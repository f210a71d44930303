"""The CoCa model (Yu et al. 2022): Flax linen modules and their configuration.

  coca.py            `CoCa`: image encoder, poolers, both text decoders, temperature; the
                     KV-cached `decode_step`; `create_model`, `empty_decode_cache`
  config.py          `ModelConfig` and its sections: frozen, validated dataclasses (`from_dict`)
  vit.py             the ViT image encoder
  text.py            the unimodal text decoder (CLS token appended last) and its masks
  multimodal.py      the multimodal decoder: cross-attention to the image, vocabulary logits
  pooler.py          attentional poolers: cascade, parallel (paper) or single (open_clip)
  blocks.py          pre-LayerNorm layers, and the stack that runs them scanned or unrolled
  attention.py       multi-head attention, with the decoding caches
  mlp.py             the transformer MLP and its exact GELU (closed-form gradient)
  linear.py          products with a weight (x . W): a weight gradient XLA:CPU runs fast, and
                     decoding's products of few rows from kernels stored (out, in)
  layer_norm.py      layer normalisation with its closed-form gradient (flax's params)
  partitioning.py    logical axis names of params and activations
  layer_stacking.py  params converted between scanned and unrolled layers
  classifier.py      an image classifier on the image encoder (probes, fine-tuning)
  adapt.py           loaded params fitted to a config: scanned <-> unrolled, position tables
                     resized, errors naming every param that does not fit
"""
from coca_jax.model.coca import CoCa, create_model, empty_decode_cache
from coca_jax.model.config import ModelConfig, from_dict
