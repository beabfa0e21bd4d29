# Two commands a newcomer needs: `make run` (the whole method on digits, CPU) and `make test`
# (`make test-fast`: the quick hermetic tier); both list the reason of every skipped test (-rs).
# Each creates .venv and installs the project on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= runs/quickstart
CONFIG ?= configs/quickstart.yaml
ARGS   ?=

.PHONY: run test test-fast install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/infer-distill run --config $(CONFIG) --out $(OUT) $(ARGS)

test: install
	$(PY) -m pytest -q -rs --durations=25 $(ARGS)

# The quick hermetic tier, while editing: no servers, data files, processes or slow runs (tests/conftest.py).
test-fast: install
	$(PY) -m pytest -q -rs --fast $(ARGS)

clean:
	rm -rf runs .pytest_cache

# The CPU benchmark on CIFAR-10, then BENCHMARKS.md from its results: `make bench`,
# `make bench ARGS=--fresh` (from nothing), `make bench ARGS=--reuse-teachers`, `ARGS="--variants m2"`.
.PHONY: bench
bench: install
	$(PY) -m benchmarks.run $(ARGS)
	$(PY) -m benchmarks.report
