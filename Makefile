# tunix-rt: `make run` serves the app with a worker; `make test` runs the whole suite.
# Both set everything up on a fresh machine (virtual environment, packages, database).

VENV ?= .venv
PORT ?= 8000
HOST ?= 127.0.0.1
# TUNIXRT_SKIP_TUNIX=1 skips the heavy Tunix/JAX install; the UI then shows Tunix as
# unavailable and only dry-runs work, and `make test` skips the real-training tests (its
# summary says how many). TUNIXRT_SKIP_BROWSER=1 does the same for the browser tests.
TUNIXRT_SKIP_TUNIX ?= 0
export TUNIXRT_SKIP_TUNIX
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: run serve serve-prod test venv install install-dev lint format bench clean

# Django 6 needs Python 3.12 or newer: use the first interpreter that is new enough.
$(PY):
	@py=""; for c in python3 python3.13 python3.12 $$(ls -d /root/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null); do \
	  if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then py=$$c; break; fi; \
	done; \
	if [ -z "$$py" ]; then echo "tunix-rt needs Python 3.12 or newer" >&2; exit 1; fi; \
	echo "Creating $(VENV) with $$py"; $$py -m venv $(VENV)
	$(PIP) install -U pip

venv: $(PY)

install: $(PY)
	$(PIP) install -e .
	@if [ "$(TUNIXRT_SKIP_TUNIX)" != "1" ]; then \
	  echo "Installing the tunix extra (Tunix + JAX for CPU; a few minutes the first time)"; \
	  $(PIP) install -e '.[tunix]'; fi

install-dev: $(PY)
	@if [ "$(TUNIXRT_SKIP_TUNIX)" != "1" ]; then \
	  echo "Installing the dev, tunix and objectstore extras (Tunix + JAX for CPU; a few minutes the first time)"; \
	  $(PIP) install -e '.[dev,tunix,objectstore]'; \
	else $(PIP) install -e '.[dev,objectstore]'; fi

run: install
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py collectstatic --noinput -v 0
	$(PY) manage.py bootstrap
	@if $(PY) -c 'import importlib.metadata as m; m.version("google-tunix")' 2>/dev/null; then \
	  $(PY) manage.py prepare_demo_model; fi
	exec $(PY) manage.py serve $(HOST):$(PORT)

# The web server and a worker without the setup steps (`make run` ends with this). SIGTERM
# to the process group or Ctrl-C cancels running training and stops everything within the
# cancel grace (TUNIXRT_CANCEL_GRACE_SECONDS) plus a few seconds.
serve:
	exec $(PY) manage.py serve $(HOST):$(PORT)

# The production web server (gunicorn, gthread workers, keep-alive; see
# tunixrt/gunicorn_settings.py) and a worker, stopped as `serve` is. Set DATABASE_URL,
# DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS for real use; run migrate and collectstatic first.
serve-prod:
	exec $(PY) manage.py serve --production $(HOST):$(PORT)

# The whole suite on a throwaway PostgreSQL and on SQLite, the real Tunix and browser lanes
# included. Installs what they need: the dev and tunix extras (install-dev), and as root
# Debian's chromium and PostgreSQL server binaries when they are missing.
test: install-dev
	@need=""; [ -x /usr/bin/chromium ] || need="$$need chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	if [ -n "$$need" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing$$need for the tests"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$need >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$need >/dev/null)); fi
	@set -e; pgdir=$$(mktemp -d /tmp/tunixrt-pg.XXXXXX); status=0; markers=""; \
	trap '.ci/throwaway-postgres stop '$$pgdir EXIT; \
	if url=$$(.ci/throwaway-postgres start $$pgdir); then \
	  echo "== tests on PostgreSQL ($$url)"; \
	  DATABASE_URL=$$url TUNIXRT_TEST_PG_DIR=$$pgdir $(PY) -m pytest $(PARALLEL) -m "not alone" $(PYTEST_ARGS) || status=$$?; \
	  echo "== tests on PostgreSQL that stop its server, alone"; \
	  DATABASE_URL=$$url TUNIXRT_TEST_PG_DIR=$$pgdir $(PY) -m pytest -m alone $(PYTEST_ARGS) || status=$$?; \
	  markers="$(SQLITE_MARKERS)"; \
	else echo "== no PostgreSQL server binaries: the whole suite on SQLite"; fi; \
	echo "== tests on SQLite"; \
	TUNIXRT_DATA_DIR=$$pgdir/sqlite $(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS) $${markers:+-m "$$markers"} || status=$$?; \
	exit $$status

# The suite runs in TEST_PROCESSES processes (pytest-xdist; each has a test database of its
# own); TEST_PROCESSES=1 runs it in one. Most tests wait on real processes (workers, training
# children, a browser), so two processes gain even on two cores.
TEST_PROCESSES ?= 2
PARALLEL := $(if $(filter 1,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES))

# After a PostgreSQL pass, the SQLite pass skips what does not depend on the database engine
# (real Tunix training).
SQLITE_MARKERS ?= not tunix

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install-dev
	@for script in bench/[a-z]*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache
