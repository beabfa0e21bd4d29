# Two commands a newcomer needs: `make run` (the whole method on digits, CPU) and `make test`
# (`make test-fast`: the quick hermetic tier); both list the reason of every skipped test (-rs).
# Each creates .venv and installs the project on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= runs/quickstart
CONFIG ?= configs/quickstart.yaml
ARGS   ?=
# A PyTorch wheel index for the install, e.g. https://download.pytorch.org/whl/cpu: CPU-only torch, no CUDA packages.
TORCH_INDEX ?=

.PHONY: run test test-fast install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]' $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
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

# The paper's CIFAR-10 protocol at ipc 10 on one GPU, sized for under 9 minutes on an H100 (benchmarks/profiles/
# cifar10-paper.yaml, variant ipc10-one-gpu), then BENCHMARKS.md: `make paper`. Its GPU time from the per-step
# costs measured so far, running nothing: `make paper ARGS=--estimate`.
.PHONY: paper
paper: install
	$(PY) -m benchmarks.run --profile cifar10-paper --variants ipc10-one-gpu --device cuda --jobs 8 $(ARGS)
	$(PY) -m benchmarks.report
