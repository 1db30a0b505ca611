#!/usr/bin/env bash
# `steer bench --gpu` on one CUDA GPU, results under $OUT (default var/bench).
#
# NOT RUN YET: no GPU was available when this was written; the code path was only exercised on CPU with a
# shrunk Gemma-2 config (tests/bench). The `engine` and `server` suites compile the decode step with CUDA graphs
# for buckets 1, 8 and 32 and verify each against eager first (a bucket that fails runs eagerly and the JSON
# says why). Set SUITE=engine (or decode, server, join, train) to run one suite when time is short.
#
#   WHEELS=dir-of-wheels OUT=/some/dir bench/gpu.sh      # wheels (if any) are installed with --no-deps
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
