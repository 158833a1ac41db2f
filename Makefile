# The two commands: `make run` and `make test`.  Each bootstraps .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean docs-images

$(STAMP): setup.cfg pyproject.toml $(shell find bankgate plugins twisted -name '*.py' 2>/dev/null)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# a regular (non-editable) install, so twistd sees twisted/plugins; setuptools'
	# build/ is removed first, or a module deleted from the tree would be installed again
	rm -rf build
	$(PY) -m pip install -q '.[test,postgres,mysql]'
	# DB2's SQLAlchemy dialect, to compile the store's SQL for DB2 in the tests;
	# without its 122 MB driver (the `db2` extra installs both for production)
	$(PY) -m pip install -q --no-deps 'ibm-db-sa>=0.4'
	# MariaDB's C driver (the `mysqlclient` extra), for N8 on MariaDB at speed: built
	# only where MariaDB's client library is (Debian: libmariadb-dev, pkg-config);
	# elsewhere its tests skip and say so
	if pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; \
	then $(PY) -m pip install -q 'mysqlclient>=2.3'; \
	else echo "(mysqlclient not built: MariaDB's client library is missing)"; fi
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

# `make run` runs the embedded demo (--demo); `make run CONFIG=my.toml` runs a configuration
# file (so does ARGS="--config my.toml"); ARGS passes further options to twistd bankgate
run: $(STAMP)
	$(VENV)/bin/twistd --nodaemon --pidfile= bankgate \
	    $(if $(CONFIG),--config $(CONFIG),$(if $(findstring -c,$(ARGS)),,--demo)) $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	# the import contract of the layers (setup.cfg [importlinter], docs/architecture.rst)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/ledger.py

# the console's screenshots in docs/console.rst (needs Debian's chromium, as the browser tests)
docs-images: $(STAMP)
	$(PY) -m bankgate.devtools.screenshots docs/images

clean:
	rm -rf $(VENV) build *.egg-info var
