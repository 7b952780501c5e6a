PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: setup test test-fast bench lint demo mutants

# One command on a fresh machine: the CPU torch wheel first (a plain `torch` requirement would pull a
# multi-GB CUDA build), then spiel in editable mode with its test tools.
setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"

# The README's test command, and exactly what CI runs: lint first, then every test.
test: lint
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

bench:
	$(PYTHON) scripts/bench_kernel.py --quick --json bench_kernel.json
	$(PYTHON) scripts/bench_step.py --quick --json bench_step.json

lint:
	$(PYTHON) -m ruff check spiel tests scripts
	$(PYTHON) -m ruff format --check spiel tests scripts

# Do the tests catch one-line bugs nobody listed? Cosmic Ray's mutants of checkpoint, delta, selection, optim,
# eval scoring and the data reader, each against its mirroring tests: a seeded sample that fits 60 minutes,
# >= 90% of the non-equivalent ones must be caught (scripts/mutants.py; MUTANTS_ARGS="--budget 600" for less)
mutants:
	$(PYTHON) scripts/mutants.py $(MUTANTS_ARGS)

demo:
	spiel-train
