# The two commands of the README's quick start: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT := DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: run test lint bench system-deps clean

$(BIN)/python:
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { $(APT) update -qq && $(APT) install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Prometheus and Alertmanager come from Debian's packages; the tests start them on loopback. Chromium
# (headless) opens the HTML report in its test; systemd-analyze verifies the unit files in deploy/.
system-deps:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v amtool >/dev/null \
	  && command -v prometheus-alertmanager >/dev/null && command -v chromium >/dev/null \
	  && command -v systemd-analyze >/dev/null || { \
	    $(APT) update -qq && $(APT) install -y -qq prometheus prometheus-alertmanager chromium systemd; }
	@# Debian starts the packaged daemons; the tests run their own on loopback ports.
	@-systemctl disable --now prometheus prometheus-alertmanager prometheus-node-exporter >/dev/null 2>&1 || true

run: $(VENV)/.installed
	$(BIN)/fleetwatch run $(ARGS)

test: $(VENV)/.installed system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: $(VENV)/.installed
	$(BIN)/python -m bench.bench_exporter

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
