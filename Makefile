# The two commands of the quick start: `make demo` and `make test`. Both set up first.
PY := .venv/bin/python
SHELL := /bin/bash

.PHONY: setup demo test test-unit test-comfy test-server test-browser bench device-check clean

setup:
	@bash scripts/setup.sh

demo: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) scripts/demo.py

# Runs on the pinned ComfyUI, then on ../shared/comfyui's newest one when it is there.
test: setup
	@bash scripts/test.sh

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-comfy: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest tests/comfy -q

test-server: setup
	$(PY) -m pytest tests/server -q

test-browser: setup
	$(PY) -m pytest tests/browser -q

bench: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) bench/run.py

# On a CUDA machine without network, after `bash bench/device_check.sh --prepare` here (see bench/NOTES.md).
device-check:
	bash bench/device_check.sh

clean:
	rm -rf .cache outputs artifacts
