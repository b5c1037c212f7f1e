#!/usr/bin/env bash
# `make test`: the whole suite on the pinned ComfyUI 0.3.75 (the oldest supported) and, when its snapshot
# is in ../shared/comfyui, on the newest upstream ComfyUI (see scripts/setup_newest_comfyui.sh).
# A few heavy modules run in one of the two only, whose ComfyUI code paths the rest of the suite covers on
# both, so that the two side-by-side runs take about as long: pinned_comfyui_only (the launch-option
# matrix, fault injection) and newest_comfyui_only (CPU fp16-autocast tuning cases; the real-clip loss test;
# the newest frontend with Vue nodes, which needs the newer ComfyUI's jobs API; the two-server batch; the
# 96-frame server run).
# The two runs go side by side, one CPU thread each: much of the suite waits on server start-up,
# imports and file I/O, so two single-threaded runs finish well before two two-threaded runs in a row
# would, which keeps CI within its time budget. Each run's log is printed whole when both are done.
# The exit status is non-zero when either fails (any pytest status but 0, so "no tests collected" fails
# too). Arguments go to both pytest runs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VERSION=${NEWEST_COMFYUI_VERSION:-0.33.0}
TARBALL=${NEWEST_COMFYUI_TARBALL:-$ROOT/../shared/comfyui/ComfyUI-$VERSION.tar.xz}
export NEWEST_COMFYUI_TARBALL=$TARBALL
PYTEST=(-m pytest tests -v -rs --durations=15 "$@")
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LOGS=$ROOT/artifacts/test-logs
mkdir -p "$LOGS"
failed=()

pinned() {
  echo "=== tests on ComfyUI ${COMFYUI_DIR:-$ROOT/.comfyui (0.3.75)} ==="
  .venv/bin/python "${PYTEST[@]}" -m "not newest_comfyui_only"
}

newest() {
  local newest_python
  newest_python=$(bash scripts/setup_newest_comfyui.sh | tail -n 1) || { echo "=== setup of ComfyUI $VERSION failed ==="; return 90; }
  echo "=== tests on ComfyUI $VERSION ($ROOT/.comfyui-$VERSION) ==="
  COMFYUI_DIR=$ROOT/.comfyui-$VERSION TAV_ARTIFACTS=$ROOT/artifacts/comfyui-$VERSION \
    "$newest_python" "${PYTEST[@]}" -m "not pinned_comfyui_only"
}

pinned >"$LOGS/pinned.log" 2>&1 &
pinned_pid=$!
if [ -f "$TARBALL" ]; then
  newest >"$LOGS/newest.log" 2>&1 &
  newest_pid=$!
fi

wait "$pinned_pid" || failed+=("ComfyUI ${COMFYUI_DIR:-0.3.75} (pytest status $?)")
cat "$LOGS/pinned.log"
if [ -n "${newest_pid:-}" ]; then
  wait "$newest_pid"
  status=$?
  cat "$LOGS/newest.log"
  if [ "$status" -eq 90 ]; then
    failed+=("ComfyUI $VERSION (setup failed)")
  elif [ "$status" -ne 0 ]; then
    failed+=("ComfyUI $VERSION (pytest status $status)")
  fi
else
  echo "=== newest-ComfyUI run skipped: $TARBALL is not here ==="
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf '=== FAILED: %s ===\n' "${failed[@]}"
  exit 1
fi
echo "=== all test runs passed ==="
