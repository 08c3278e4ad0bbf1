# The README's commands. Everything installs into .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/synthetic
RUN ?= runs/demo

.PHONY: install demo test test-slow lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Makes the synthetic nail data set and trains configs/demo_cpu.py on it.
demo: install
	test -d $(DATA)/Images || $(PY) -m trainer.synthetic --output_dir=$(DATA)
	$(PY) -m trainer.train --config=configs/demo_cpu.py --data_root=$(DATA) --workdir=$(RUN)

# Lint, then the fast tests, two processes at a time (the long ones: make test-slow),
# files started in tests/conftest.py's order.
test: install lint
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# Two at a time too: most of a slow test is single-threaded (tracing, process
# start-up, Python), so two share the cores better than one uses them. The
# longest files start first (tests/conftest.py: LONGEST_FILES_FIRST).
test-slow: install
	$(PY) -m pytest -q -m slow -n 2 --dist loadfile --no-loadscope-reorder --durations=30

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs data/synthetic
