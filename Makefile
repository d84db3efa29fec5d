# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv with
# every install pinned by constraints.txt (torch==2.13.0: the CPU wheel; anything else would
# download gigabytes of CUDA).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# `mlflow models serve --env-manager local` starts uvicorn from PATH: the venv's bin comes first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test lint docs install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/forecast demo

lint: $(STAMP)
	$(BIN)/ruff check forecast pipelines serving benchmarks tests docs

# the docs site: every link and anchor checked (strict), built into site/
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint docs
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) outputs mlflow.db .pytest_cache site
