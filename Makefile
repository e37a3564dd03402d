# `make demo` and `make test` each create or refresh .venv, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench gpu clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/roiops explain --out roiops-explain
	$(VENV)/bin/roiops bench --quick

test: $(STAMP)
	$(VENV)/bin/ruff check roiops tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/roiops bench

# On a CUDA machine: the Triton kernels compiled (not interpreted) against the reference,
# then the GPU benchmark in float32 and float16. Not part of CI (CI has no GPU).
gpu: $(STAMP)
	$(PY) -m pytest -q tests/test_triton.py
	$(VENV)/bin/roiops bench --device cuda --json benchmarks/results/cuda-fp32.json
	$(VENV)/bin/roiops bench --device cuda --dtype float16 --json benchmarks/results/cuda-fp16.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
