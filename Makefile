# The two commands of the README: `make conformance` and `make test`. Everything they need is
# installed here, into .venv, from the pinned versions in pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed-stamp
FIXTURES_DIR := build/fixtures
FIXTURES := $(FIXTURES_DIR)/.built-stamp
MODEL ?= $(FIXTURES_DIR)/ppo_default.zip
ONNX ?=
PROFILE ?= ci

.PHONY: install fixtures conformance test test-slow mutation bench spec clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[report,runtimes,test]"
	touch $@

fixtures: $(FIXTURES)

$(FIXTURES): $(INSTALLED) $(wildcard fixtures/*.py)
	$(PY) -m fixtures --out $(FIXTURES_DIR)
	touch $@

# The suite on MODEL (default: the bundled fixture model); ONNX=a.onnx checks that artifact.
conformance: $(INSTALLED) $(if $(filter $(FIXTURES_DIR)/%,$(MODEL)),$(FIXTURES))
	$(PY) -m pytest conformance $(if $(MODEL),--model $(MODEL)) $(if $(ONNX),--onnx $(ONNX)) \
		--hypothesis-profile $(PROFILE)

# The self-tests, but for the slow ones (marked `slow`: fresh venvs, command-line subprocesses,
# the browser, the size limit, zoos of models, recurrent and image own exports), which
# `make test-slow` runs; CI runs both.
test: $(INSTALLED)
	$(PY) -m pytest selftests -n 2 --dist worksteal -m "not slow" --hypothesis-profile $(PROFILE)

test-slow: $(INSTALLED)
	$(PY) -m pytest selftests -n 2 --dist worksteal -m slow --hypothesis-profile $(PROFILE)

# The mutant self-tests alone, with their report (they are part of `make test` too).
mutation: $(INSTALLED)
	$(PY) -m pytest selftests/test_mutants.py --hypothesis-profile $(PROFILE)

bench: $(INSTALLED)
	$(PY) bench/bench.py

spec: $(INSTALLED)
	$(PY) -m policy_onnx spec --write

clean:
	rm -rf build .pytest_cache .hypothesis
