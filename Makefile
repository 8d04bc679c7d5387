# The README's commands. Everything installs into .venv on first use.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/bench_model.py

lint: setup
	$(PY) -m ruff check swinv2 train tests bench

clean:
	rm -rf .venv
