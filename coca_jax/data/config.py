"""`config.data`: defaults, and checking a user's fields against them (typos are refused)."""
import ml_collections

DEFAULTS = dict(
    train=dict(name="coca_shapes", split="train"),  # a dataset spec, or a list/dict of them
    eval=dict(name="coca_shapes", split="validation"),
    data_dir=None,  # TFDS data dir (None: TFDS's default, ~/tensorflow_datasets)
    tokenizer="embedded",  # a spec for coca_jax.tokenizers.load
    image_size=32,
    text_length=24,
    normalization="openai_clip",  # a name in preprocess.NORMALIZATIONS ...
    mean=None, std=None,  # ... or 3 numbers each, which then take precedence
    crop="random_resized_crop",  # training crop; "center" for resize + centre crop
    crop_scale=(0.9, 1.0),  # random resized crop: area fraction (open_clip's training default)
    crop_ratio=(3 / 4, 4 / 3),  # and aspect ratio range
    max_caption_chars=1000,
    # Training keeps each record read from a random-access dataset in memory, and with
    # crop="center" each picture's decoded, cropped pixels (image_size^2 x 3 bytes): for data
    # that fit in memory and are read for many epochs (configs/tiny.py). Batches are unchanged.
    cache_in_memory=False,
    num_threads=2,  # Grain reader threads in this process, each making whole batches
    prefetch=256,  # examples read ahead
    shuffle_window=256,  # streamed shards: records shuffled together
    reprepare=False,  # prepare converted / manual-dir datasets again from their source files
)


def default_config() -> ml_collections.ConfigDict:
  """The defaults as a ConfigDict (the embedded dataset at the tiny config's sizes)."""
  return ml_collections.ConfigDict(DEFAULTS)


def resolve(data_config) -> dict:
  """Plain dict of the defaults overridden by `data_config` (a dict or ConfigDict)."""
  if data_config is None:
    data_config = {}
  if hasattr(data_config, "to_dict"):
    data_config = data_config.to_dict()
  unknown = set(data_config) - set(DEFAULTS)
  if unknown:
    raise ValueError(f"unknown config.data fields {sorted(unknown)}; known: {sorted(DEFAULTS)}")
  return {**DEFAULTS, **data_config}
