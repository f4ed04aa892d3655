# `make test` and `make demo` set up .venv (CPU PyTorch) on first use, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: setup test demo bench clean gpu-wheels gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so nothing below pulls a CUDA build
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/demo.py --output demo_output

bench: $(STAMP)
	$(PY) benchmarks/tokenize.py

# on a machine with internet: wheels of everything but torch for a GPU machine (into .whl/)
gpu-wheels: $(STAMP)
	$(PY) tools/gpu_check.py wheels --dest .whl

# on a GPU machine (its own CUDA PyTorch, maybe offline): install from .whl/ what is missing, run the
# tests marked gpu and benchmarks/gpu.py; without CUDA it says so and exits 0
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py check --wheels .whl

clean:
	rm -rf $(VENV) demo_output .venv-gpu
