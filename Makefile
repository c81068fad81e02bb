# Set-up is automatic: `make demo` and `make test` create .venv and install when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# a second `make demo` continues (or, when finished, re-reports) the run in runs/demo
demo: $(STAMP)
	$(VENV)/bin/flowaction demo --out runs/demo $$(test -f runs/demo/last.pt && echo --resume)

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

clean-venv:
	rm -rf $(VENV)
