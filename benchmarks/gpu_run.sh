#!/usr/bin/env bash
# The GPU figures in one call: coca_base training step in bfloat16 over a batch-size sweep.
# Usage on the accelerator host, from the repository root (ml_collections carried as a wheel):
#   bash benchmarks/gpu_run.sh OUT_DIR
set -u
out=${1:-/tmp/coca_gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
run() { timeout 200 python3 benchmarks/train_step.py --config=configs/coca_base.py \
          --peak_tflops=989,790 --steps=10 --warmup=2 --output="$out/train_step.jsonl" "$@"; }
run --batch_sizes=256,512,1024 --remat_policy=none --scan_layers=true
run --batch_sizes=512 --remat_policy=none --scan_layers=false
run --batch_sizes=2048 --remat_policy=dots_no_batch --scan_layers=true
