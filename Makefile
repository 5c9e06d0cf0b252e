# `make demo` and `make test` create .venv if missing, install mindeye into it, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mindeye-installed
DEMO_OUT ?= demo-out

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch + torchvision first, with pip (these exact versions are on local disk here)
	# --no-compile: byte-compiling every module took 40 of the 110 s for torch alone; Python compiles what it imports
	$(PY) -m pip install -q --no-compile -c constraints.txt torch torchvision
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[dev,index,report,offline,nifti,mindeye2]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mindeye demo --out $(DEMO_OUT)

# One pytest-xdist worker per core (at most 4), whole test files per worker (their fixtures are built once).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
