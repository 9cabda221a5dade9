# tunix-rt: `make run` serves the app with a worker; `make test` runs the whole suite.
# Both set everything up on a fresh machine (virtual environment, packages, database).

VENV ?= .venv
PORT ?= 8000
HOST ?= 127.0.0.1
# TUNIXRT_SKIP_TUNIX=1 skips the heavy Tunix/JAX install; the UI then shows Tunix as
# unavailable and only dry-runs work.
TUNIXRT_SKIP_TUNIX ?= 0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: run serve test venv install install-dev lint format bench clean

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
	$(PIP) install -e '.[dev]'

run: install
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py collectstatic --noinput -v 0
	$(PY) manage.py bootstrap
	@if $(PY) -c 'import importlib.metadata as m; m.version("google-tunix")' 2>/dev/null; then \
	  $(PY) manage.py prepare_demo_model; fi
	@echo ""
	@echo "tunix-rt is at http://$(HOST):$(PORT)/  (log in with the admin user; password above,"
	@echo "or in var/admin-password.txt). API docs: http://$(HOST):$(PORT)/api/docs"
	@echo "Stop with Ctrl-C."
	@trap 'kill 0' INT TERM EXIT; \
	$(PY) manage.py qcluster & \
	$(PY) manage.py runserver --noreload $(HOST):$(PORT)

# The production web server (gunicorn, gthread workers, keep-alive; tunixrt/gunicorn_settings.py)
# with a worker. Set DATABASE_URL, DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS for real use.
serve: install
	$(PY) manage.py migrate --noinput -v 0
	$(PY) manage.py collectstatic --noinput -v 0
	@trap 'kill 0' INT TERM EXIT; \
	$(PY) manage.py qcluster & \
	TUNIXRT_BIND=$(HOST):$(PORT) $(VENV)/bin/gunicorn -c tunixrt/gunicorn_settings.py tunixrt.wsgi

# The whole suite on a throwaway PostgreSQL (when the system has its server binaries)
# and on SQLite. Installs Debian's chromium for the browser tests when it is missing.
test: install-dev
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing chromium for the browser tests"; \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)); fi
	@set -e; pgdir=$$(mktemp -d /tmp/tunixrt-pg.XXXXXX); status=0; \
	trap '.ci/throwaway-postgres stop '$$pgdir EXIT; \
	if url=$$(.ci/throwaway-postgres start $$pgdir); then \
	  echo "== tests on PostgreSQL ($$url)"; \
	  DATABASE_URL=$$url $(PY) -m pytest $(PYTEST_ARGS) || status=$$?; \
	else echo "== no PostgreSQL server binaries: skipping the PostgreSQL pass"; fi; \
	echo "== tests on SQLite"; \
	TUNIXRT_DATA_DIR=$$pgdir/sqlite $(PY) -m pytest $(PYTEST_ARGS) -m "$(SQLITE_MARKERS)" || status=$$?; \
	exit $$status

# The SQLite pass skips what does not depend on the database engine (real Tunix training).
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
