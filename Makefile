# Two commands set up and run everything on a fresh machine:
#   make demo   - installs scnas into .venv (CPU torch) and runs the demo on generated data
#   make test   - installs scnas with its test tools into .venv and runs the whole test suite
#   make lint   - ruff and mypy (CI runs it before make test: .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
CONSTRAINTS ?= constraints/cpu.txt
STAMP   = $(VENV)/.installed

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scnas demo $(OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check scnas_dsl tests benchmarks examples
	$(VENV)/bin/mypy scnas_dsl

clean:
	rm -rf $(VENV) build dist *.egg-info
