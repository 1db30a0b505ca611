#!/usr/bin/env bash
# Build the GPU image on its real CUDA base and check, on one GPU, that it serves with the compiled decode step.
#
# NOT RUN YET: no GPU was available when this was written. CI builds docker/Dockerfile without CUDA (BASE_IMAGE =
# a local Debian base plus CPU torch, tests/deploy/test_container.py), so every step but the CUDA base is
# exercised there; what only this script checks is the CUDA base, Triton's compile with the image's gcc against
# the driver's libcuda (from the NVIDIA container runtime), and CUDA graphs.
#
# Needs: the NVIDIA driver and Container Toolkit, a registry (the pytorch/pytorch base), and HF_TOKEN for the
# paper's model (or STEER_MODEL / STEER_SAE and a mounted catalog of your own).
#
#   HF_TOKEN=hf_... docker/gpu-check.sh        # exits 0 when /ready says engine.mode compiled
set -euo pipefail
cd "$(dirname "$0")/.."
TAG="${TAG:-sparse-steer:gpu}"
NAME="${NAME:-steer-gpu-check}"
PORT="${PORT:-8000}"
docker build -f docker/Dockerfile -t "$TAG" .
docker rm -f "$NAME" >/dev/null 2>&1 || true
docker run -d --name "$NAME" --gpus 1 -p "127.0.0.1:$PORT:8000" -e HF_TOKEN \
    -e STEER_COMPILE_BUCKETS="${STEER_COMPILE_BUCKETS:-1,8}" -e STEER_ENGINE=compiled \
    -v steer-hf:/data/hf -v steer-catalog:/data/catalog:ro "$TAG"
trap 'docker stop -t 45 "$NAME" >/dev/null; docker logs "$NAME" >"var/gpu-check.log" 2>&1; docker rm "$NAME" >/dev/null' EXIT
mkdir -p var
ready_check='
import json, sys
try:
    body = json.load(sys.stdin)
except ValueError:  # not listening yet
    sys.exit(2)
if body.get("status") != "ready":
    sys.exit(2)
print(json.dumps(body, indent=1))
engine = body["engine"]
sys.exit(0 if engine["mode"] == "compiled" else "engine.mode %s: %s" % (engine["mode"], engine["mode_reason"]))
'
for _ in $(seq 180); do   # model download + load + compile: up to 15 minutes
    rc=0
    curl -s "http://127.0.0.1:$PORT/ready" | python3 -c "$ready_check" || rc=$?
    [ "$rc" -ne 2 ] && exit "$rc"
    [ "$(docker inspect -f '{{.State.Running}}' "$NAME")" = true ] || { docker logs "$NAME" | tail -30; exit 1; }
    sleep 5
done
echo "not ready within 15 minutes" >&2
exit 1
