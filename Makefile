# Two entry points for a fresh machine:
#   make run   set up, then plan Mixtral-8x7B on an H100 PCIe host (table + plan.html)
#   make test  set up with the engine, dev and ray extras, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU machines take the CPU torch 2.13.0 build that lies on disk; an unpinned torch pulls a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: run test setup setup-dev clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[engine,dev,ray]'
	touch $@

setup: $(VENV)/.core
setup-dev: $(VENV)/.dev

run: setup
	$(VENV)/bin/specmoe plan --model mixtral-8x7b --hardware h100-pcie --html plan.html

test: setup-dev
	$(VENV)/bin/lint-imports
	TRITON_INTERPRET=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) plan.html
