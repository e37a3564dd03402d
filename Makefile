# `make demo` and `make test` each create or refresh .venv, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean

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

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
