# The two commands: `make run` and `make test`.  Each bootstraps .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): setup.cfg pyproject.toml $(shell find bankgate plugins twisted -name '*.py' 2>/dev/null)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# a regular (non-editable) install, so twistd sees twisted/plugins
	$(PY) -m pip install -q '.[test,postgres,mysql]'
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/twistd --nodaemon --pidfile= bankgate $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/ledger.py

clean:
	rm -rf $(VENV) build *.egg-info var
