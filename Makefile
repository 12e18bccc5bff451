# newsworker — the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export NEWSWORKER_CORPUS ?= $(abspath ../shared/corpus)

.PHONY: install browser run demo test test-fast bench eval soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "newsworker needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Ingest on the embedded default (SQLite database, SQLite broker): no server needed.
run: install
	$(BIN)/newsworker db upgrade
	$(BIN)/newsworker feeds import-opml config/feeds.opml
	$(BIN)/newsworker worker --beat

## Offline demo: serves the sample site locally and ingests it through a real worker.
demo: install
	$(BIN)/python -m worker.demo

## The operator page's browser test drives Debian's Chromium, never a downloaded one:
## installed here when missing (as root, with apt); else the test says what to install.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || { \
	  echo "installing Debian's chromium for tests/test_operator_page.py"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; }

## The whole suite: real Redis, PostgreSQL (started if not answering) and Celery workers.
test: install browser
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/dedupe_scale.py
	$(BIN)/python bench/dispatch_scale.py
	$(BIN)/python bench/poll_scale.py
	$(BIN)/python bench/api_bench.py

## Continuous polling of good and hostile feeds through the real service, with worker
## restarts: nothing lost or duplicated, memory flat.  SOAK_MINUTES=30 for the full run.
SOAK_MINUTES ?= 30
soak: install
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

eval: install
	$(BIN)/python bench/eval_tagging.py
	$(BIN)/python bench/eval_dedupe.py

clean:
	rm -rf var .pytest_cache
