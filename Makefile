# `make demo` and `make test` each create or refresh .venv, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench gpu gpu-tune clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/roiops explain --out roiops-explain
	$(VENV)/bin/roiops bench --quick

# pytest processes side by side (pytest-xdist; most of the suite's time is single-threaded
# Triton interpreter runs): 2 for the 2-core CI machine; TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2

test: $(STAMP)
	$(VENV)/bin/ruff check roiops tests benchmarks
	$(PY) -m pytest -q -n $(TEST_WORKERS)

bench: $(STAMP)
	$(VENV)/bin/roiops bench

# On a CUDA machine: the Triton kernels compiled (not interpreted) and the CUDA tests,
# the benchmark in float32 and float16, latency, determinism; one table at the end. Not
# part of CI (CI has no GPU). `make gpu PY=python3` uses that interpreter's preinstalled
# torch/Triton/torchvision/pytest from the source tree and installs nothing (GPU
# machines may have no package registry).
ifeq ($(origin PY),command line)
GPU_SETUP :=
else
GPU_SETUP := $(STAMP)
endif

gpu: $(GPU_SETUP)
	PYTHONPATH=. $(PY) benchmarks/gpu_report.py --json benchmarks/results/cuda.json

# On a CUDA machine, what the launchers' choices are made from (program order, layouts,
# the deterministic backward's passes, program sizes): a few minutes more, not a check.
gpu-tune: $(GPU_SETUP)
	PYTHONPATH=. $(PY) benchmarks/gpu_report.py --parts tuning --json benchmarks/results/cuda-tune.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
