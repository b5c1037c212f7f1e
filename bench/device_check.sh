#!/usr/bin/env bash
# The GPU check: one command on a CUDA machine that has PyTorch but no network.
#
#   bash bench/device_check.sh --prepare     # here, with network: stage .device-check/ (<= 64 MiB):
#                                            #   ComfyUI's source without frontend or big tokenizers,
#                                            #   the wheels that such a machine lacks, the real clips
#   bash bench/device_check.sh               # there: install the staged wheels, build a random
#                                            #   full-size SD1.5, run tests/comfy, bench 24 x 512^2
#   bash bench/device_check.sh --cpu         # the same code path on a CPU, at toy sizes
#
# Results: $OUT (when set) or bench/results/device-<time>/: device_check.json, device_check.md,
# pytest.log. Numbers: step times, peak VRAM (torch.cuda.max_memory_allocated), the fraction of the
# measured bf16 matmul peak, and the CPU/GPU capability.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=.device-check
PY=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
  src=${COMFYUI_DIR:-.comfyui}
  [ -f "$src/main.py" ] || { echo "[device-check] no ComfyUI at $src: run make setup first" >&2; exit 1; }
  rm -rf "$STAGE" && mkdir -p "$STAGE/wheels" "$STAGE/videos"
  # Only the SD1 tokenizer is read (SD1.5 and SDXL's CLIPs); the others are 17 MB of LLM vocabularies.
  tar -C "$src" -cf - --exclude=./custom_nodes --exclude=./models --exclude=./tests --exclude=./tests-unit \
      --exclude=./comfy_api_nodes --exclude='./comfy/text_encoders/*_tokenizer' --exclude='__pycache__' \
      --exclude=./output --exclude=./input --exclude=./user --exclude=./temp . | (mkdir -p "$STAGE/comfyui" && tar -C "$STAGE/comfyui" -xf -)
  mkdir -p "$STAGE/comfyui/models" "$STAGE/comfyui/custom_nodes"
  # What ComfyUI imports in-process and the GPU machine's image lacks (it has torch, numpy, einops,
  # safetensors, opencv, transformers, pytest, aiohttp, scipy, pillow, pyyaml, tqdm, psutil).
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$STAGE/wheels" \
      av==18.1.0 torchsde==0.2.6 trampoline==0.1.2 pydantic==2.14.4 pydantic_core==2.50.5 \
      annotated-types==0.8.0 typing-inspection==0.4.5
  cp ../shared/videos/*.mp4 "$STAGE/videos/" 2>/dev/null || true
  du -sh "$STAGE"
  size=$(du -sm "$STAGE" | cut -f1)
  [ "$size" -le 56 ] || { echo "[device-check] $STAGE is ${size} MB: too big to travel with the tree" >&2; exit 1; }
  echo "[device-check] staged; run it with carry=[\"$STAGE\"]: bash bench/device_check.sh"
  exit 0
fi

[ -d "$STAGE/comfyui" ] || { echo "[device-check] $STAGE/ is missing: run bash bench/device_check.sh --prepare first" >&2; exit 1; }
if ! "$PY" -c "import av, torchsde, pydantic" 2>/dev/null; then  # the staged wheels are for Python 3.12
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$STAGE"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export COMFYUI_DIR=$PWD/$STAGE/comfyui OMP_WAIT_POLICY=PASSIVE
export TAV_SHARED_VIDEOS=$PWD/$STAGE/videos PYTHONUNBUFFERED=1
exec "$PY" bench/device_check.py "$@"
