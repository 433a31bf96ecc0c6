#!/usr/bin/env bash
# The GPU half of issue 15's stream benchmark, as ONE command (estimated, not measured: about 2 minutes on an
# H100/H200 with 16 cores; killed at 280 s so that it fits 5 minutes of device time):
#
#   scripts/gpu_stream_bench.sh [more options of python -m tstudy.bench --data stream --train]
#
# From the repository root or anywhere; needs torch, torchvision, numpy and Pillow (no
# installs). Generates 4,096 synthetic 500x375 JPEGs and their packed store once (kept in
# $TSTUDY_BENCH_CACHE, default /tmp/tstudy-stream-train), then times, at 224 px, batch 256, bf16:
# the classic ImageFolder + DataLoader loop (one tv_resnet18 behind a tv_resnet34 teacher) and
# the engine's streamed path with K = 1, 4, 8 packed students, N = min(cores, 16) workers for both.
# Writes stream-train-<device>.json (and -profile.txt, the profiler's op tables) under $OUT if
# set, else results/bench/. Prepared and tested only in its tiny CPU form (without CUDA the
# bench runs tiny by itself).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python}
cores=$(nproc)
workers=$(( cores < 16 ? cores : 16 ))
out_dir=${OUT:-results/bench}
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout 280 "$py" -m tstudy.bench --data stream --train --ks 1,4,8 --workers "$workers" --cudnn-benchmark \
    --keep "${TSTUDY_BENCH_CACHE:-/tmp/tstudy-stream-train}" --out-dir "$out_dir" "$@"
