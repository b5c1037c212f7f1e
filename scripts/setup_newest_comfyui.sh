#!/usr/bin/env bash
# Idempotent: the newest upstream ComfyUI beside the pinned one, for the second test run.
# Unpacks ../shared/comfyui/ComfyUI-$VERSION.tar.xz into .comfyui-$VERSION/ and makes an overlay venv
# .venv-comfyui-$VERSION/ for it: its own site-packages holds what this ComfyUI pins differently
# (frontend 1.49.6 instead of 1.32.9, templates, docs, comfy-kitchen, av>=16, torchaudio, ...), and
# a .pth file appends the main .venv's site-packages behind it, so torch (5.5 GB), torchvision and
# the test tools are reused instead of installed twice. Packages of the overlay shadow the main
# venv's; the main venv is never written to (pip does not uninstall outside its environment).
# Run after scripts/setup.sh. Prints the overlay's python on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VERSION=${NEWEST_COMFYUI_VERSION:-0.33.0}
TARBALL=${NEWEST_COMFYUI_TARBALL:-$ROOT/../shared/comfyui/ComfyUI-$VERSION.tar.xz}
COMFY=$ROOT/.comfyui-$VERSION
BASE_VENV=$ROOT/.venv
VENV=$ROOT/.venv-comfyui-$VERSION
# The newest torchaudio on the registry; it imports beside torch 2.14.1. ComfyUI >= 0.2x imports
# torchaudio at start-up (comfy/sd.py).
TORCHAUDIO=torchaudio==2.11.1
log() { printf '[setup %s] %s\n' "$VERSION" "$*" >&2; }

if [ ! -f "$COMFY/main.py" ]; then
  log "unpacking $TARBALL into $COMFY"
  tmp=$(mktemp -d "$ROOT/.comfyui-unpack.XXXXXX")
  tar -xJf "$TARBALL" -C "$tmp"
  rm -rf "$COMFY"
  mv "$tmp/ComfyUI-$VERSION" "$COMFY"
  rm -rf "$tmp"
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating the overlay venv $VENV on top of $BASE_VENV"
  "$BASE_VENV/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'  # a venv, not a system python
  "$(readlink -f "$BASE_VENV/bin/python")" -m venv "$VENV"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
base_site=$("$BASE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$base_site" > "$site/_base_venv.pth"

stamp=$VENV/.comfy-reqs-installed
if [ ! -f "$stamp" ] || [ "$COMFY/requirements.txt" -nt "$stamp" ]; then
  log "installing ComfyUI $VERSION's requirements into the overlay (torch and torchvision from $BASE_VENV)"
  grep -viE '^(torch|torchvision|torchaudio)([<>=~ ]|$)' "$COMFY/requirements.txt" > "$VENV/comfy-reqs.txt"
  echo requests >> "$VENV/comfy-reqs.txt"
  # --no-deps for torchaudio: its dependency on torch is met by the base venv's torch 2.14.1.
  "$VENV/bin/python" -m pip install --quiet --no-deps "$TORCHAUDIO"
  "$VENV/bin/python" -m pip install --quiet -r "$VENV/comfy-reqs.txt"
  "$VENV/bin/python" -c 'import torch, torchaudio, torchvision' || { log "torchaudio does not import"; exit 1; }
  touch "$stamp"
fi
log "ready: ComfyUI $COMFY, python $VENV/bin/python"
echo "$VENV/bin/python"
