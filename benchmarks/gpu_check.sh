#!/usr/bin/env bash
# Everything a lent CUDA GPU should show, in one call (about 5 minutes on an H200):
#   1. the kernel tests against the PyTorch reference (tests/plugins, -m cuda), fp32 and fp16,
#      up to segformer-b5's stage 3 at 1024x2048;
#   2. the kernel microbenchmark at segformer-b5's merge sites (kernels_cuda.py);
#   3. PyTorch CUDA merged vs unmerged segformer-b5 at 1024x1024 (SDPA), fp32 and fp16.
# Needs torch with CUDA, nvcc and pytest; edgemerge from this checkout (no install).
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/edgemerge-gpu-check}
mkdir -p "$OUT"
status=0
nvidia-smi -L || status=1
python3 -m pytest -q -p no:cacheprovider -m cuda -rs tests/plugins 2>&1 | tee "$OUT/kernel_tests.log" || status=1
python3 benchmarks/kernels_cuda.py --json "$OUT/kernels_fast.json" 2>&1 | tee "$OUT/kernels.md" || status=1
python3 benchmarks/kernels_cuda.py --variant hq --resolution 1024x1024 --json "$OUT/kernels_hq.json" 2>&1 \
  | tee -a "$OUT/kernels.md" || status=1
for dtype in fp32 fp16; do
  python3 benchmarks/bench_merging_torch.py --model segformer-b5 --resolution 1024x1024 --variants none,hq,fast,n2d \
    --device cuda --dtype "$dtype" --iters 30 --warmup 5 --json "$OUT/b5_$dtype.json" 2>/dev/null \
    | tee "$OUT/b5_$dtype.md" || status=1
done
exit $status
