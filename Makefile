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

# Two passes: the suite on the CPU with any GPU hidden (its figures and exact-equality checks
# are CPU results; a GPU machine runs it as CI does), then the `cuda` tests, which use the GPU
# and skip without one.
test: install
	@start=$$(date +%s); \
	CUDA_VISIBLE_DEVICES= $(PY) -m pytest -q -rs -m "not cuda" tests && \
	$(PY) -m pytest -q -rs -m cuda tests; rc=$$?; \
	echo "make test: $$(( $$(date +%s) - start )) s of wall time (both passes)"; exit $$rc

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
