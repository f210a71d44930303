#!/usr/bin/env bash
# The accelerator figures in one call, on synthetic in-memory data, coca_jax only (no torch):
#   1. coca_base training step in bfloat16 over batch sizes and remat choices (each sweep stops
#      at its first failure, e.g. out of memory), MFU against 989 and 790 TFLOP/s (an H200's
#      dense bf16 specification and the figure measured on it);
#   2. captioning tokens/s and captions/s, greedy and 6 beams, 30 tokens;
#   3. image and text encoding throughput;
#   4. one KV-cached decoding step against the memory it reads (decode_step.py).
# Needs only jax, flax, optax and numpy: configs load without ml_collections (benchmarks/common.py).
#
#   bash benchmarks/gpu_run.sh OUT_DIR                 # on the GPU host, from the repo root
#   GPU_RUN_SMOKE=1 bash benchmarks/gpu_run.sh OUT_DIR # configs/tiny.py (or GPU_RUN_CONFIG),
#                                                      # tiny counts (CI, CPU)
set -u
out=${1:-/tmp/coca_gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
py=${PYTHON:-python3}

if [ -n "${GPU_RUN_SMOKE:-}" ]; then
  config=${GPU_RUN_CONFIG:-configs/tiny.py}; peaks=1; steps="--steps=1 --warmup=1"; limit=120
  sweeps=("full:2:{\"caption_loss_chunks\":2}" "none:2:{\"attention_impl\":\"xla\"}")
  caption="--batch=2 --max_len=8 --beams=2 --runs=1"; encode="--batch_sizes=2 --runs=1"
  step="--batch_sizes=2 --max_len=8 --runs=1 --probe_mb=8"
else
  config=${GPU_RUN_CONFIG:-configs/coca_base.py}; peaks=989,790; steps="--steps=5 --warmup=2"
  limit=240
  # remat policy:ascending batch sizes[:model overrides as JSON], most telling first. Earlier H200 figures: 256
  # without remat took 105.5 GB, 1536 with full remat 72.2 GB. caption_loss_chunks=4 never
  # holds the whole (batch, 64, 64000) logits (a TPU compile at 512, full remat: 31.4 ->
  # 23.4 GB). The last point tries cuDNN's fused attention.
  chunks='"caption_loss_chunks":4'
  sweeps=("full:1536,2048:{$chunks}" "dots_no_batch:512,768:{$chunks}" "none:256:{$chunks}"
          "full:1536:{$chunks,\"attention_impl\":\"cudnn\"}")
  caption="--batch=64 --runs=3"; encode="--batch_sizes=256 --runs=5"
  step="--batch_sizes=8,64 --runs=3 --probe_mb=2048"
fi

{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv; $py -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
    flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$out/host.txt"

for sweep in "${sweeps[@]}"; do
  IFS=: read -r policy batches overrides <<< "$sweep"
  [ -z "$overrides" ] && overrides='{}'
  for batch in $(echo "$batches" | tr , ' '); do
    # Leave time for captioning and encoding within one 10-minute call.
    [ $SECONDS -gt ${GPU_RUN_TRAIN_BUDGET_S:-360} ] && break 2
    # One process per point: a failed (out-of-memory) compile leaves nothing behind.
    timeout $limit $py benchmarks/train_step.py --config=$config --batch_sizes=$batch \
      --remat_policy=$policy --scan_layers=true --peak_tflops=$peaks $steps \
      --model_overrides="$overrides" --output="$out/train_step.jsonl" || break
    tail -n 1 "$out/train_step.jsonl" | grep -q '"error"' && break
  done
done
timeout $limit $py benchmarks/captioning.py --configs=$config --skip_open_clip $caption \
  | tee -a "$out/captioning.jsonl"
timeout $limit $py benchmarks/encode.py --configs=$config --peak_tflops=$peaks $encode \
  | tee -a "$out/encode.jsonl"
timeout $limit $py benchmarks/decode_step.py --configs=$config $step \
  | tee -a "$out/decode_step.jsonl"
echo "results in $out"
