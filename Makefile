# make demo  - install everything, separate a short real clip with the bundled model
# make test  - install everything, run the test suite
# make bench - install everything, run the benchmark suite (writes benchmarks/RESULTS.md)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.separator-installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	VENV=$(VENV) bash scripts/setup.sh
	@touch $(STAMP)

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q -rs tests

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
