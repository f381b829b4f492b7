# Two commands for a fresh clone: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned first so that pip takes the local CPU build instead of pulling CUDA wheels.
TORCH_PIN ?= torch==2.13.0
PLUGINS := plugins/modmask-lens-opt

.PHONY: demo test bench install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e .
	touch $@

# Dev extras, plus the example adapter plugin so that the suite exercises the entry-point path end to end.
$(VENV)/.installed-dev: $(VENV)/.installed $(PLUGINS)/pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]" $(addprefix -e ,$(PLUGINS))
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/modmask-lens demo --out demo-output

# The report's browser test needs Debian's headless Chromium (installed once, from the Debian registry).
CHROMIUM_PACKAGES := chromium chromium-driver

test: install-dev
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq $(CHROMIUM_PACKAGES)) \
		|| (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq $(CHROMIUM_PACKAGES))
	$(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest

bench: install
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_masks.py

clean:
	rm -rf $(VENV) demo-output
