# kvstore: the two commands a newcomer needs are `make demo` and `make test`.
# Each one builds its own .venv and an editable install (which compiles the C redo log) on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kvstore-installed
NATIVE := $(wildcard native/*.c native/*.h native/*.py)

.PHONY: demo test lint bench torture clean help

help:
	@echo "make demo    start a 3-node local cluster, kill its leader, prove nothing was lost"
	@echo "make test    lint, then the whole test suite"
	@echo "make bench   benchmarks (pytest-benchmark), kept out of make test"
	@echo "make lint    ruff (lint + format check) and mypy --strict on kvstore/"
	@echo "make torture SEED=1 MINUTES=10 [CONSENSUS=raft|paxos] [TLS=1]   a long fault soak"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Re-install when the metadata or the C sources change: the editable install compiles kvstore._kvwal.
# The `fast` extra adds uvloop, which the node and the client use when it is installed.
$(STAMP): $(PY) pyproject.toml setup.py $(NATIVE)
	$(PY) -m pip install --quiet -e '.[test,fast,tls]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kvstore demo

lint: $(STAMP)
	$(VENV)/bin/ruff check kvstore tests benchmarks native
	$(VENV)/bin/ruff format --check kvstore tests benchmarks native
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q tests

# The peers (etcd, PySyncObj) are installed by the project's own script; a peer that cannot be
# installed is skipped with a message, never a failure.
bench: $(STAMP)
	bash benchmarks/install_peers.sh $(PY)
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-columns=min,median,mean,ops,rounds
	$(VENV)/bin/kvstore bench --json bench.json

torture: $(STAMP)
	$(PY) -m kvstore.testing.torture --seed $${SEED:-1} --minutes $${MINUTES:-10} --consensus $${CONSENSUS:-raft} $(if $(filter 1 yes true,$(TLS)),--tls)

clean:
	rm -rf $(VENV) build *.egg-info kvstore/_kvwal*.so kvstore/_kvwal.c
