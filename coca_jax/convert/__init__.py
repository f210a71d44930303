"""Weight converters from other CoCa implementations into coca_jax params.

Modules:
  open_clip.py   open_clip CoCa state dict <-> coca_jax params, exactly
                 (`python -m coca_jax.convert.open_clip`)
  unwrap.py      the state dict inside a saved PyTorch checkpoint: nesting and key prefixes of
                 training scripts and wrappers (DDP, torch.compile, Lightning, EMA)
"""
