# The two README commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := proxy rewriter keyring config audit

.PHONY: demo test lint bench install postgres

demo: install
	$(VENV)/bin/tenantgate demo

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(PACKAGES)

bench: install
	$(PY) -m bench

install: postgres $(VENV)/.installed

# Strict editable mode (a link tree) so mypy and ruff see the real files; re-linked when
# a package folder gains or loses a file.
$(VENV)/.installed: pyproject.toml $(PACKAGES)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --config-settings editable_mode=strict -e '.[test,bench]'
	touch $@

# PostgreSQL from Debian's packages when the machine has no initdb (server, psql, pgbench).
postgres:
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing PostgreSQL (apt-get)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql postgresql-contrib; \
	fi
