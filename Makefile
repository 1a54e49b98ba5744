# The two README commands: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := proxy rewriter keyring config audit

.PHONY: demo test lint bench bench-cluster install postgres peer

demo: install
	$(VENV)/bin/tenantgate demo

# The whole suite on the compiled build, then the fast socket-free tests of the compiled modules
# (and every doctest) once more on their sources: TENANTGATE_PURE=1 (proxy/native.py).
PURE_TESTS := tests/test_native.py tests/test_pipeline.py tests/test_filters.py tests/test_withheld.py tests/test_timeouts.py tests/test_codec.py tests/test_rewriter_unit.py \
	tests/test_rewriter_crosscheck.py tests/test_rewriter_hypothesis.py tests/test_positions_property.py \
	tests/test_iso_literals.py tests/test_iso_statements_unit.py tests/test_encryption_rewriter.py \
	tests/test_audit_verify.py tests/test_audit_writer.py proxy rewriter audit
# Test files run in TEST_JOBS processes (pytest-xdist, a file per process at a time: module fixtures are
# shared within a file); most of a test's time is waiting on PostgreSQL and the proxy, so 2 pay even on 2 cores.
TEST_JOBS ?= 2
test: lint
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile --durations=25  # the slowest: the 20-minute CI budget stays visible
	TENANTGATE_PURE=1 $(PY) -m pytest -q $(PURE_TESTS)

# mypy runs over the installed link tree as one package, `tenantgate`: checked folder by folder,
# every import between them (tenantgate.audit from proxy/, ...) would be unresolved, so unchecked.
lint: install
	$(VENV)/bin/ruff check .
	cd build/__editable__.tenantgate-*/ && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p tenantgate

bench: install
	$(PY) -m bench

# Opt-in: TPS of 1, 2 and 3 instances behind HAProxy (scoped + audit) in one run, as ratios.
bench-cluster: install postgres
	$(PY) -m bench.cluster

# The hot modules compiled with mypyc (the list: MODULES in proxy/native.py), again when one of
# them changes or pip has emptied the link tree; TENANTGATE_PURE=1 installs none (the fallback).
NATIVE_MODE := $(if $(TENANTGATE_PURE),pure,compiled)
NATIVE_SRC := proxy/native.py $(addsuffix .py,$(subst .,/,$(shell sed -n 's/^    "tenantgate\.\(.*\)",$$/\1/p' proxy/native.py)))
$(VENV)/.native-$(NATIVE_MODE): $(VENV)/.installed $(NATIVE_SRC)
	rm -f $(VENV)/.native-*
	time $(PY) -m tenantgate.proxy.native build
	touch $@

install: postgres $(VENV)/.native-$(NATIVE_MODE)

# Strict editable mode (a link tree) so mypy and ruff see the real files; re-linked when
# a package folder or any folder below it gains or loses a file.
PACKAGE_DIRS := $(shell find $(PACKAGES) -type d -not -name __pycache__ 2>/dev/null)
$(VENV)/.installed: pyproject.toml $(PACKAGE_DIRS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --config-settings editable_mode=strict -e '.[test,bench]'
	touch $@

# From Debian's packages when missing: PostgreSQL (server, psql, pgbench), SoftHSM2 (the
# PKCS#11 token the keyring's HSM provider is tested against) and HAProxy (several instances).
postgres:
	@missing=""; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="postgresql postgresql-contrib"; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing (apt-get)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# Opt-in, not part of `make test`: real clients (pgJDBC, node-postgres, ActiveRecord, Django,
# SQLAlchemy, psycopg's and Django's own suites) direct and through the proxy in both pool modes;
# prints the differences. PEER_ARGS e.g. "--quick" or "--suite jdbc --suite node".
peer: install
	bash tests/peer/install_clients.sh
	$(PY) -m tests.peer $(PEER_ARGS)
