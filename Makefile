# Two commands for a fresh machine:  `make demo` (set up + main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 installs a CPU build from this machine's local wheel; override elsewhere,
# e.g. `make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"`.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# `make test` runs the suite on two pytest-xdist workers, each with its share of the cores, slow
# tests dealt out first (tests/conftest.py); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: setup model demo test lint bench notebooks key-sample clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,notebooks]"
	touch $@

model: setup
	$(PY) -c "import excise.model as m; print('default model at', m.ensure_default_model())"

demo: model
	$(VENV)/bin/excise demo

lint: setup
	$(VENV)/bin/ruff check excise tests bench

test: model lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

bench: model
	$(PY) bench/locate_speed.py
	$(PY) bench/edit_speed.py
	$(PY) bench/forget_quality.py
	$(PY) bench/robustness.py

# the default model's key-statistics text sample, shipped in assets/text so no new machine
# spends its first edit generating it (rerun when the default model or the sample spec changes)
key-sample: model
	$(PY) -c "from excise.edit.stats import write_bundled_sample; print(write_bundled_sample())"

clean:
	rm -rf $(VENV) .pytest_cache out
