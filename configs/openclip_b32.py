"""open_clip's coca_ViT-B-32, exactly: CLIP-style ViT-B/32 at 224 px, one attentional pooler
(256 queries: output 0 is the embedding, 255 go to the decoder), the legacy CLS padding mask,
two MLPs per multimodal layer, untied output projection, 76-token context, 253.56M params.

Fine-tune converted weights (params-only init):
  python train.py --config=configs/openclip_b32.py --workdir=/tmp/ft --config.init_from=DIR
Convert open_clip weights (e.g. the LAION-2B `laion2b_s13b_b90k` file) and check the count:
  python -m coca_jax.convert.open_clip --input=open_clip_model.safetensors \
      --config=configs/openclip_b32.py --output=/tmp/coca_b32
  python -m coca_jax.tools.summary --config=configs/openclip_b32.py
"""
from coca_jax.convert import open_clip
from coca_jax.train.config import base_config


def get_config():
  config = base_config()
  config.model = open_clip.published_model("coca_ViT-B-32")
  # Fine-tuning defaults: open_clip's tokenizer and preprocessing; the embedded dataset until
  # `data.train` / `data.eval` point at your own (see coca_jax/data/sources.py).
  config.data.update(dict(train=dict(name="coca_shapes", split="train"),
                     eval=dict(name="coca_shapes", split="validation"),
                     tokenizer="clip_bpe", image_size=224, text_length=76,
                     normalization="openai_clip"))
  config.optimizer.learning_rate = 1e-5
  config.evals.captions = False
  return config
