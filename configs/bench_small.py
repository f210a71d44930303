"""bench-small: a CoCa in open_clip's layout, small enough to time a training step side by side
with open_clip on a CPU. Image 64 px, patch 8, ViT width 256, 6 layers, 4 heads, MLP 1024; one
attentional pooler (64 queries, 4 heads); text vocabulary 8192, context 32, width 256, 4 heads,
6 layers, CLS appended; multimodal decoder width 256, 4 heads, 6 layers; embedding dim 256;
batch 32.

  python benchmarks/vs_open_clip.py --configs=configs/bench_small.py --peak_gflops=134
  python benchmarks/train_step.py --config=configs/bench_small.py --batch_sizes=32
"""
from coca_jax.train.config import base_config

# The same model for open_clip.coca_model.CoCa(**OPEN_CLIP) (vision heads = width // head_width).
OPEN_CLIP = dict(
    embed_dim=256,
    vision_cfg=dict(image_size=64, patch_size=8, width=256, head_width=64, layers=6,
                    mlp_ratio=4.0, attentional_pool=True, attn_pooler_queries=64,
                    attn_pooler_heads=4, output_tokens=True),
    text_cfg=dict(context_length=32, vocab_size=8192, width=256, heads=4, layers=6,
                  embed_cls=True, output_tokens=True),
    multimodal_cfg=dict(context_length=32, vocab_size=8192, width=256, heads=4, layers=6),
)


def get_config():
  config = base_config()
  config.model = dict(
      vision=dict(image_size=64, patch_size=8, width=256, depth=6, num_heads=4, mlp_dim=1024,
                  class_token=True, pre_norm=True, patch_bias=False),
      pooler=dict(layout="single", num_queries=64, num_heads=4),
      text=dict(vocab_size=8192, context_length=32, width=256, depth=6, num_heads=4,
                mlp_dim=1024, pad_id=0, eos_id=3, legacy_cls_mask=True),
      decoder=dict(depth=6, num_heads=4, mlp_dim=1024, mlp_after_self_attention=True,
                   tie_embeddings=False),
      embed_dim=256,
      layer_norm_eps=1e-5,
  )
  config.global_batch_size = 32
  config.data.update(dict(image_size=64, text_length=32))
  return config
