"""Caption generation speed: coca_jax (KV cache, one jitted loop) against open_clip's generate.

Prints one JSON line per measurement: captions/s and generated tokens/s (the returned
captions' tokens after the start token, end token included), median of the timed runs after
one compiling / warm-up run, the image encoder included on both sides. Every caption is made
exactly `max_len` tokens long (the end token is forbidden before the last position), so both
sides do the same number of steps; beam search follows open_clip's rules (num_beam_groups=1,
summed raw logits). coca_jax's params go through `decode.with_transposed_kernels` once, before
the timed runs (its seconds are in the line). Random weights:

  * configs/tiny.py (parallel poolers) runs on coca_jax only: open_clip cannot build it. Its
    24-token text context cannot hold 30 tokens, so it runs with text.context_length=30 (only
    the position table grows);
  * "tiny_open_clip_layout" (tiny's sizes in open_clip's layout) and configs/openclip_b32.py
    (coca_ViT-B-32) run on both, with the same weights (open_clip's initialisation, converted),
    so the lines with "ratio" compare like with like, and greedy captions are compared token
    for token.

  python benchmarks/captioning.py > benchmarks/results/cpu_captioning.jsonl
  python benchmarks/captioning.py --configs=configs/coca_base.py --batch=64 --skip_open_clip
"""
import argparse
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  pylint: disable=g-import-not-at-top

import coca_jax  # noqa: E402
from coca_jax.inference import decode  # noqa: E402

TINY_OPEN_CLIP_CONFIG = dict(  # configs/tiny.py's sizes, open_clip's layout
    vision=dict(image_size=32, patch_size=4, width=64, depth=2, num_heads=2, mlp_dim=256,
                class_token=True, pre_norm=True, patch_bias=False),
    pooler=dict(layout="single", num_queries=17, num_heads=2),
    text=dict(vocab_size=1000, context_length=30, width=64, depth=2, num_heads=2, mlp_dim=256,
              pad_id=0, eos_id=3, legacy_cls_mask=True),
    decoder=dict(depth=2, num_heads=2, mlp_dim=256, mlp_after_self_attention=True),
    embed_dim=64,
    layer_norm_eps=1e-5,
)


def load_config(path):
  return common.model_dict(common.load_config(path)[0])


def token_ids(cfg):
  """(start, end, pad): CLIP's for its vocabulary, else our SentencePiece convention."""
  return (49406, 49407, 0) if cfg.text.vocab_size == 49408 else (2, 3, 0)


def generated_tokens(tokens, end_id, pad_id):
  """Tokens after the start token, up to and including the end token."""
  count = 0
  for row in np.asarray(tokens):
    row = list(row[1:])
    count += row.index(end_id) + 1 if end_id in row else sum(t != pad_id for t in row)
  return count


def timed(fn, runs):
  """(seconds of the first call, median seconds of `runs` more, last result)."""
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), out


def line(**fields):
  fields = common.header(**fields)
  print(json.dumps(fields), flush=True)
  return fields


def measure_ours(name, model_config, params, images, strategy, args):
  model = coca_jax.create_model(model_config)
  start, end, pad = token_ids(model.cfg)
  # open_clip's rules throughout; its beam search sums raw logits and forces no end token.
  config = decode.GenerationConfig(
      strategy=strategy, num_beams=args.beams, max_len=args.max_len, min_len=args.max_len - 1,
      start_id=start, end_id=end, pad_id=pad, beam_score="logit", force_end=strategy != "beam")
  images = jnp.asarray(images)
  # Once per set of params, as a captioning service would: the params on the device (not
  # copied from host memory at every call) and, on CPU, the text kernels transposed for
  # few-row steps; its time is reported apart.
  t0 = time.perf_counter()
  variables = jax.block_until_ready(
      decode.with_transposed_kernels(model, jax.device_put(params)))
  prepare = time.perf_counter() - t0

  def run():
    return jax.block_until_ready(decode.generate(model, variables, images, config))
  first, seconds, out = timed(run, args.runs)
  n = generated_tokens(out.tokens, end, pad)
  result = line(impl="coca_jax decode.generate (KV cache, one jit)", model=name,
                strategy=strategy, num_beams=args.beams if strategy == "beam" else 1,
                batch=len(images), max_len=args.max_len, tokens_per_caption=n / len(images),
                seconds=round(seconds, 4), compile_and_first_run_s=round(first, 2),
                with_transposed_kernels_s=round(prepare, 2),
                captions_per_s=round(len(images) / seconds, 3),
                generated_tokens_per_s=round(n / seconds, 1))
  return result, np.asarray(out.tokens)


def measure_open_clip(name, torch_model, images, strategy, start, end, pad, args):
  import torch  # pylint: disable=g-import-not-at-top
  import open_clip  # pylint: disable=g-import-not-at-top
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  kwargs = dict(seq_len=args.max_len, min_seq_len=args.max_len - 1, sot_token_id=start,
                eos_token_id=end, pad_token_id=pad)
  if strategy == "beam":
    kwargs.update(generation_type="beam_search", num_beams=args.beams, num_beam_groups=1)
  else:
    kwargs.update(generation_type="top_k", top_k=1)

  def run():
    with torch.no_grad():
      return torch_model.generate(x, **kwargs).numpy()
  _, seconds, out = timed(run, args.open_clip_runs)
  n = generated_tokens(out, end, pad)
  result = line(impl=f"open_clip {open_clip.__version__} CoCa.generate (no cache, torch "
                f"{torch.__version__}, {torch.get_num_threads()} threads)", model=name,
                strategy=strategy, num_beams=args.beams if strategy == "beam" else 1,
                batch=len(images), max_len=args.max_len, tokens_per_caption=n / len(images),
                seconds=round(seconds, 4), captions_per_s=round(len(images) / seconds, 3),
                generated_tokens_per_s=round(n / seconds, 1))
  padded = np.full((len(images), args.max_len), pad, out.dtype)
  padded[:, :out.shape[1]] = out
  return result, padded


def random_params(model_config, seed=0):
  model = coca_jax.create_model(model_config)
  size, length = model.cfg.vision.image_size, 4
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)),
                                  jnp.zeros((1, length), jnp.int32))
  return nn.unbox(variables)["params"]


def open_clip_model(name, seed=0):
  """open_clip's own initialisation, seeded; it leaves text_decoder.text_projection
  uninitialised (torch.empty), so that one is drawn here."""
  import torch  # pylint: disable=g-import-not-at-top
  import open_clip  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  if name == "coca_ViT-B-32":
    model = open_clip.create_model(name, pretrained=None)
  else:
    kwargs, _ = coca_jax.export.open_clip_config(TINY_OPEN_CLIP_CONFIG)  # the same model
    model = open_clip.coca_model.CoCa(**kwargs)
  proj = model.text_decoder.text_projection
  with torch.no_grad():
    proj.normal_(std=proj.shape[0] ** -0.5)
  return model.eval()


def compare(name, model_config, torch_name, batch, args):
  """Both implementations on the same architecture and weights; returns the result lines."""
  from coca_jax.convert.open_clip import convert_state_dict  # pylint: disable=g-import-not-at-top
  torch_model = open_clip_model(torch_name)
  state_dict = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  params = convert_state_dict(state_dict, model_config)
  cfg = coca_jax.create_model(model_config).cfg
  start, end, pad = token_ids(cfg)
  images = np.random.default_rng(0).standard_normal(
      (batch, cfg.vision.image_size, cfg.vision.image_size, 3), dtype=np.float32)
  for strategy in ("greedy", "beam"):
    ours, our_tokens = measure_ours(name, model_config, params, images, strategy, args)
    theirs, their_tokens = measure_open_clip(name, torch_model, images, strategy, start, end, pad,
                                             args)
    line(comparison="ratio", model=name, strategy=strategy,
         captions_per_s_coca_jax_over_open_clip=round(
             ours["captions_per_s"] / theirs["captions_per_s"], 2),
         same_tokens=bool(np.array_equal(our_tokens, their_tokens)),
         rows_with_same_tokens=int((our_tokens == their_tokens).all(1).sum()), rows=batch)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--max_len", type=int, default=30)
  parser.add_argument("--beams", type=int, default=6)
  parser.add_argument("--configs", default="configs/tiny.py",
                      help="configs timed on coca_jax only (comma-separated; '' for none)")
  parser.add_argument("--batch", type=int, default=8, help="batch of --configs")
  parser.add_argument("--dtype", default=None, help="override model.dtype of --configs")
  parser.add_argument("--tiny_batch", type=int, default=8)
  parser.add_argument("--b32_batch", type=int, default=4)
  parser.add_argument("--runs", type=int, default=3, help="timed runs of coca_jax")
  parser.add_argument("--open_clip_runs", type=int, default=1, help="timed runs of open_clip")
  parser.add_argument("--skip_b32", action="store_true")
  parser.add_argument("--skip_open_clip", action="store_true",
                      help="no side-by-side runs (a host without torch)")
  args = parser.parse_args()
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  for path in [p for p in args.configs.split(",") if p]:
    model_config = load_config(path if os.path.isabs(path) else os.path.join(repo, path))
    if args.dtype:
      model_config["dtype"] = args.dtype
    # A context shorter than the captions (tiny: 24) grows; only the position table changes.
    model_config["text"] = dict(model_config["text"], context_length=max(
        model_config["text"]["context_length"], args.max_len))
    cfg = coca_jax.create_model(model_config).cfg
    images = np.random.default_rng(0).standard_normal(
        (args.batch, cfg.vision.image_size, cfg.vision.image_size, 3), dtype=np.float32)
    params = random_params(model_config)
    for strategy in ("greedy", "beam"):
      measure_ours(f"{path} (text.context_length={cfg.text.context_length}, {cfg.dtype})",
                   model_config, params, images, strategy, args)
    del params
  if args.skip_open_clip:
    return
  compare("tiny_open_clip_layout (tiny's sizes, open_clip's layout, text.context_length=30)",
          TINY_OPEN_CLIP_CONFIG, "tiny", args.tiny_batch, args)
  if not args.skip_b32:
    compare("openclip_b32 (coca_ViT-B-32)", load_config(os.path.join(repo, "configs",
                                                                     "openclip_b32.py")),
            "coca_ViT-B-32", args.b32_batch, args)


if __name__ == "__main__":
  main()
