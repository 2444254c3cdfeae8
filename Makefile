# The two commands of the README. Each creates the virtual environment from the project's own files
# when it is missing.
PY := .venv/bin/python
CONFIG ?= configs/smollm2_135m.py
WORKDIR ?= runs/smollm2_135m
PYTEST_ARGS ?= -m "not slow"

.PHONY: run test test-all venv bench clean-venv

$(PY): requirements.txt scripts/setup_env.sh
	bash scripts/setup_env.sh
	@touch -h $(PY)

venv: $(PY)

run: $(PY)
	$(PY) -m ghosttrack_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(PY)
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: $(PY)
	$(PY) -m pytest

clean-venv:
	rm -rf .venv
