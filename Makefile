# The commands of the README. Each creates the virtual environment from the project's own files when it
# is missing.
#   make test       what CI runs (.ci/run): lint, then the default suite (everything but `slow`)
#   make test-fast  the edit-test loop: the default suite without the `heavy` tests (tests/conftest.py)
#   make test-all   every test, `slow` ones included
PY := .venv/bin/python
CONFIG ?= configs/smollm2_135m.py
WORKDIR ?= runs/smollm2_135m
PYTEST_ARGS ?= -m "not slow"
FAST_ARGS ?= -m "not slow and not heavy"

.PHONY: run lint test test-fast test-all venv clean-venv

# A stamp file, not .venv/bin/python: that is a symlink, whose target's date make would compare.
STAMP := .venv/.installed

$(STAMP): requirements.txt scripts/setup_env.sh pyproject.toml
	bash scripts/setup_env.sh
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m ghosttrack_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest $(FAST_ARGS)

test-all: lint
	$(PY) -m pytest

clean-venv:
	rm -rf .venv
