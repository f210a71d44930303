"""open_clip's coca_ViT-B-32, exactly: CLIP-style ViT-B/32 at 224 px, one attentional pooler
(256 queries: output 0 is the embedding, 255 go to the decoder), the legacy CLS padding mask,
two MLPs per multimodal layer, untied output projection, 76-token context, 253.56M params.

Fine-tune converted weights (params-only init):
  python train.py --config=configs/openclip_b32.py --workdir=/tmp/ft --config.init_from=DIR
Convert open_clip weights (e.g. the LAION-2B `laion2b_s13b_b90k` file) and check the count:
  python -m coca_jax.convert.open_clip --input=open_clip_model.safetensors \
      --config=configs/openclip_b32.py --output=/tmp/coca_b32
  python -m coca_jax.model.summary --config=configs/openclip_b32.py
"""
from coca_jax.train_config import base_config


def get_config():
  config = base_config()
  config.model = dict(
      vision=dict(image_size=224, patch_size=32, width=768, depth=12, num_heads=12,
                  mlp_dim=3072, class_token=True, pre_norm=True, patch_bias=False),
      pooler=dict(layout="single", num_queries=256, num_heads=8),
      text=dict(vocab_size=49408, context_length=76, width=512, depth=12, num_heads=8,
                mlp_dim=2048, pad_id=0, eos_id=49407, legacy_cls_mask=True),
      decoder=dict(depth=12, num_heads=8, mlp_dim=2048, mlp_after_self_attention=True,
                   tie_embeddings=False),
      embed_dim=512,
      layer_norm_eps=1e-5,
  )
  # Fine-tuning defaults: open_clip's tokenizer and preprocessing; the embedded dataset until
  # `data.train` / `data.eval` point at your own (see coca_jax/data/sources.py).
  config.data.update(dict(train=dict(name="coca_shapes", split="train"),
                     eval=dict(name="coca_shapes", split="validation"),
                     tokenizer="clip_bpe", image_size=224, text_length=76,
                     normalization="openai_clip"))
  config.optimizer.learning_rate = 1e-5
  config.evals.captions = False
  return config
