# Two entry points for a fresh machine:
#   make run   set up, then plan Mixtral-8x7B on an H100 PCIe host (table + plan.html)
#   make test  set up with the engine, dev and ray extras, then run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU machines take the CPU torch 2.13.0 build that lies on disk; an unpinned torch pulls a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: run test setup setup-dev browser clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[engine,dev,ray,png]'
	touch $@

setup: $(VENV)/.core
setup-dev: $(VENV)/.dev

run: setup
	$(VENV)/bin/specmoe plan --model mixtral-8x7b --hardware h100-pcie --html plan.html

# The browser test of generated pages needs Chromium (Debian's `chromium`): installed here where
# apt-get and root allow, else the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: no Chromium (apt-get install -y chromium): the browser test of the pages will skip"

# pytest runs as .venv/bin/pytest, not `python -m pytest`: the latter puts the repository root on
# sys.path, where kernels/ shadows Hugging Face's `kernels` package that transformers imports.
test: setup-dev browser
	$(VENV)/bin/ruff check specmoe engine kernels tests experiments
	$(VENV)/bin/lint-imports
	TRITON_INTERPRET=1 $(VENV)/bin/pytest -q -m "not artifacts"
	@echo "-- committed artifacts are what their scripts give today:"
	TRITON_INTERPRET=1 $(VENV)/bin/pytest -q -m artifacts

clean:
	rm -rf $(VENV) plan.html
