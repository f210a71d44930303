"""The CoCa model: Flax linen modules and their configuration."""
from coca_jax.model.coca import CoCa, create_model, empty_decode_cache
from coca_jax.model.config import ModelConfig, from_dict
