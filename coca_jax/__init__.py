"""coca_jax: CoCa (Contrastive Captioners) in JAX/Flax."""
from coca_jax.model import CoCa, ModelConfig, create_model
from coca_jax.export import load

__all__ = ["CoCa", "ModelConfig", "create_model", "load"]
