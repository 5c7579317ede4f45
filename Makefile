# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# torch and torchvision are pinned here, not in pyproject: these builds lie on the
# project's machines, any other version downloads several GB. The extras: DALI for CUDA 13
# (this machine's build; `cuda12` on a CUDA 12 driver), the tools (demo, pictures, the
# default teacher) and the test tools.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[cuda13,tools,dev]' $(TORCH_PINS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dali-relabel demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest

bench: $(STAMP)
	mkdir -p runs/bench
	$(PY) benchmarks/store.py --out runs/bench/store.json
	$(PY) benchmarks/label_pooling.py --out runs/bench/label_pooling.json
	$(PY) benchmarks/decoders.py --out runs/bench/decoders.json
	$(PY) benchmarks/generate.py --out runs/bench/generate.json
	$(PY) benchmarks/throughput.py --out-dir runs/bench
	$(PY) benchmarks/augment.py --out runs/bench/augment.json
	$(PY) benchmarks/color_ops.py --out runs/bench/color_ops.json
	$(PY) benchmarks/epochs.py --out runs/bench/epochs.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache runs
