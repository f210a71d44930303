"""Weight converters from other CoCa implementations into coca_jax params."""
