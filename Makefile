# BudCluster — the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
# pytest-xdist workers for `make test` (tests/parallel.py); 2 keeps a 2-core machine busy without thrashing
TEST_WORKERS ?= 2
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint format venv keys migrate services k8s clean help

help:
	@echo "make run    start web (:9082), a Celery worker and beat on the embedded defaults (or DATABASE_URL/CELERY_BROKER_URL)"
	@echo "make test   ruff + the whole pytest suite against PostgreSQL, Redis and a real control plane"
	@echo "make k8s    build (once, into ~/.cache/budcluster) kube-apiserver, controller-manager, scheduler, etcd, KWOK"

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-runtime: requirements.txt | $(VENV)/bin/python
	$(PIP) install --quiet -r requirements.txt
	@touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PIP) install --quiet -r requirements-dev.txt
	@touch $@ $(VENV)/.installed-runtime

venv: $(VENV)/.installed-runtime

keys: venv
	@$(PY) manage.py generate_keys --if-missing

migrate: venv
	@$(PY) manage.py migrate --noinput

run: keys migrate
	@$(PY) manage.py ensure_admin
	@bash scripts/run.sh

services:
	@bash scripts/ensure_services.sh

# The real control plane the test bed runs: built from Go modules once, then reused from the cache.
k8s:
	@bash scripts/build_k8s.sh

test: $(VENV)/.installed-dev services k8s
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf var/broker var/test-logs .pytest_cache .ruff_cache
