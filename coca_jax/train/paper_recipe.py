"""The CoCa paper's pretraining recipe (section 4.1), shared by configs/coca_{base,large,2b}.py.

Global batch 65,536 for 500k steps; Adafactor with β1 = 0.9, β2 = 0.999 and decoupled weight
decay λ = 0.01; learning rate warmed up linearly over the
first 2% of steps to 8e-4, then decayed linearly; λ_con = 1, λ_cap = 2; 288 px images with 18 px
patches; a 64k SentencePiece vocabulary; fully-sharded data parallel over the whole pod.

The Adafactor update (coca_jax/train/optim.py; not optax's adafactor defaults, which decay β2 as
1 - t^-0.8, scale updates by the parameter's norm, clip updates and keep no momentum), for the
gradient g_t of a weight W (r x c), with η_t the learning-rate schedule:
  β̂2_t = β2 (1 - β2^(t-1)) / (1 - β2^t)            constant β2, Adam's bias correction
  R_t = β̂2_t R_{t-1} + (1 - β̂2_t) rowmean(g_t² + 1e-30)
  C_t = β̂2_t C_{t-1} + (1 - β̂2_t) colmean(g_t² + 1e-30)   (vectors, and matrices with a
  v̂_t = R_t C_tᵀ / mean(R_t)                             side < 128, keep a full v̂_t)
  m_t = β1 m_{t-1} + (1 - β1) g_t / sqrt(v̂_t),   m̂_t = m_t / (1 - β1^t)
  W_t = W_{t-1} - η_t (m̂_t + λ W_{t-1})
so the weight decay applied at step t is η_t·λ: it follows the schedule (warmup, linear decay).
No decay on biases, norms, embeddings, CLS/class tokens, pooler queries or the temperature.

The paper's data are JFT-3B (class names turned into text by templates) and ALIGN, half of each
batch from each. Neither is public: `data` below mixes two datasets of your own the same way
(replace the paths). `smoke=True` swaps in the embedded dataset and tokenizer for a short
CPU run of the real architecture.
"""
from coca_jax.train.config import base_config


# The CoCa paper's Table 1: (image encoder layers, width, MLP, heads), (unimodal = multimodal
# decoder layers, width, MLP, heads), and whether input and output embeddings are tied (only
# the tied count lands near the paper's 2.1B for CoCa).
PAPER_MODELS = {
    "base": ((12, 768, 3072, 12), (12, 768, 3072, 12), False),
    "large": ((24, 1024, 4096, 16), (12, 1024, 4096, 16), False),
    "2b": ((40, 1408, 6144, 16), (18, 1408, 5632, 16), True),
}


def paper_model(name: str) -> dict:
  """The model config of CoCa-Base, CoCa-Large or CoCa (2.1B): `name` "base", "large" or "2b"
  (paper Table 1), at the paper's pretraining resolution (288 px, 18 px patches), with a
  64k-token vocabulary, 64-token context, cascade poolers of 256 queries, bfloat16 compute and
  scanned layers. Raises KeyError for another name."""
  (v_depth, v_width, v_mlp, v_heads), (t_depth, t_width, t_mlp, t_heads), tied = \
      PAPER_MODELS[name]
  return dict(
      vision=dict(image_size=288, patch_size=18, width=v_width, depth=v_depth,
                  num_heads=v_heads, mlp_dim=v_mlp),
      pooler=dict(layout="cascade", num_queries=256, num_heads=v_heads),
      text=dict(vocab_size=64000, context_length=64, width=t_width, depth=t_depth,
                num_heads=t_heads, mlp_dim=t_mlp, pad_id=0, eos_id=3),
      decoder=dict(depth=t_depth, num_heads=t_heads, mlp_dim=t_mlp, tie_embeddings=tied),
      embed_dim=t_width,
      dtype="bfloat16",
      scan_layers=True,
  )


def paper_config(model: dict, smoke: bool = False):
  """The CoCa paper's pretraining recipe (section 4.1: batch 65,536, 500k steps, Adafactor
  with b1 0.9, b2 0.999, weight decay 0.01, lr 8e-4 with 2% warmup and linear decay) for the
  given model config; `smoke` shrinks it to a run that finishes in minutes."""
  config = base_config()
  config.model = model
  config.global_batch_size = 65536
  config.num_train_steps = 500_000
  config.optimizer = dict(name="adafactor", learning_rate=8e-4, warmup_fraction=0.02,
                          warmup_steps=0, decay="linear", end_learning_rate=0.0, b1=0.9,
                          b2=0.999, eps=1e-30, weight_decay=0.01, grad_clip_norm=0.0)
  config.loss.update(dict(contrastive_weight=1.0, caption_weight=2.0))
  # FSDP as wide as the model's widths allow (fsdp 0: 256 or 128 on the paper's 2,048 chips;
  # fsdp over the whole pod would divide no width and replicate every param), data the rest.
  config.mesh = dict(slice=1, data=-1, fsdp=0, tensor=1)
  config.checkpoint = dict(every_steps=2000, max_to_keep=3, async_save=True)
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  text_length = model["text"]["context_length"]
  if smoke:
    config.data.update(dict(train=dict(name="coca_shapes", split="train"),
                       eval=dict(name="coca_shapes", split="validation"),
                       tokenizer="embedded", image_size=288, text_length=text_length))
    # A smoke run checks that the real architecture trains; evaluating 1,000 images at 288 px
    # would take longer than the run on a CPU.
    config.evals.update(dict(zeroshot=False, val_loss=False, captions=False, batch_size=8))
  else:
    config.data.update(dict(
        train=dict(
            # JFT-like: a labelled image dataset, class names turned into captions.
            classification=dict(name="my_classification_dataset", format="tfds",
                                label_key="label", templates="clip", weight=0.5),
            # ALIGN-like: noisy image alt-text pairs, e.g. img2dataset webdataset shards.
            image_text=dict(name="my_alt_text", format="webdataset", stream=True,
                            path="gs://my-bucket/alt_text/{00000..99999}.tar", weight=0.5),
        ),
        eval=dict(name="imagenet2012", split="validation", label_key="label",
                  templates="clip"),
        tokenizer="gs://my-bucket/tokenizers/coca_64k.model",
        image_size=288, text_length=text_length))
  return config
