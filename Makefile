# The two commands of the README. Each creates the virtual environment from the project's own files
# when it is missing.
PY := .venv/bin/python
CONFIG ?= configs/smollm2_135m.py
WORKDIR ?= runs/smollm2_135m
PYTEST_ARGS ?= -m "not slow"

.PHONY: run test test-all venv clean-venv

# A stamp file, not .venv/bin/python: that is a symlink, whose target's date make would compare.
STAMP := .venv/.installed

$(STAMP): requirements.txt scripts/setup_env.sh pyproject.toml
	bash scripts/setup_env.sh
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m ghosttrack_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest

clean-venv:
	rm -rf .venv
