# kvstore: the two commands a newcomer needs are `make demo` and `make test`.
# Each one builds its own .venv and an editable install (which compiles the C redo log) on first use.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kvstore-installed
NATIVE := $(wildcard native/*.c native/*.h native/*.py)

.PHONY: demo test test-pythons lint bench torture docs clean help

help:
	@echo "make demo    start a 3-node local cluster, kill its leader, prove nothing was lost"
	@echo "make test    lint, then the whole test suite"
	@echo "make bench   benchmarks (pytest-benchmark), then kvstore beside etcd and PySyncObj; not in make test"
	@echo "make test-pythons   storage, Raft and native tests on each CPython 3.11-3.13 found"
	@echo "make lint    ruff (lint + format check) and mypy --strict on kvstore/"
	@echo "make torture SEED=1 MINUTES=10 [CONSENSUS=raft|paxos] [TLS=1]   a long fault soak"
	@echo "make docs    the documentation site (mkdocs, API reference from the docstrings) into site/"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

# Re-install when the metadata or the C sources change: the editable install compiles kvstore._kvwal.
# Extras: `fast` adds uvloop (the node and the client use it when installed), `cli` rich (the
# demo's progress bars), `tls` what the TLS tests need, `docs` mkdocs and mkdocstrings (make docs
# and tests/docs). The distribution was called `kvstore`
# before it became `kvstore-raft`: an old editable install of that name is removed first.
$(STAMP): $(PY) pyproject.toml setup.py $(NATIVE)
	$(PY) -m pip uninstall --quiet --yes kvstore 2>/dev/null || true
	$(PY) -m pip install --quiet -e '.[test,fast,cli,tls,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kvstore demo

lint: $(STAMP)
	$(VENV)/bin/ruff check kvstore tests benchmarks native
	$(VENV)/bin/ruff format --check kvstore tests benchmarks native
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q tests

# Each CPython in PYTHONS that the machine has (PATH, pyenv) or Debian packages, in .venv-X.Y.
PYTHONS ?= 3.11 3.12 3.13
test-pythons:
	PYTHONS="$(PYTHONS)" bash tests/packaging/pythons.sh

# The peers (etcd, PySyncObj) are installed by the project's own script; a peer that cannot be
# installed is skipped with a message, never a failure.
bench: $(STAMP)
	bash benchmarks/install_peers.sh $(PY)
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-columns=min,median,mean,ops,rounds
	$(PY) -m benchmarks.compare --json bench.json

torture: $(STAMP)
	$(PY) -m kvstore.testing.torture --seed $${SEED:-1} --minutes $${MINUTES:-10} --consensus $${CONSENSUS:-raft} $(if $(filter 1 yes true,$(TLS)),--tls)

# The site, with the API reference generated from the docstrings; any warning fails the build.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .venv-3.* build dist site *.egg-info kvstore/_kvwal*.so kvstore/_kvwal.c
