"""Settings come from the environment; checked in fresh interpreters so nothing leaks."""

import json
import os
import subprocess
import sys

from .conftest import REPO

PROBE = (
    "import json, django; from django.conf import settings; django.setup();"
    "db = settings.DATABASES['default'];"
    "print(json.dumps({'engine': db['ENGINE'], 'name': str(db['NAME']), 'host': db.get('HOST'),"
    " 'port': db.get('PORT'), 'options': {k: str(v) for k, v in db.get('OPTIONS', {}).items()},"
    " 'debug': settings.DEBUG, 'hosts': settings.ALLOWED_HOSTS,"
    " 'artifacts': str(settings.ARTIFACTS_DIR), 'q': settings.Q_CLUSTER}))"
)


def settings_with(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    base.update({"DJANGO_SETTINGS_MODULE": "tunixrt.settings", "TUNIXRT_DATA_DIR": str(tmp_path)})
    base.update(env)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=base, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_default_database_is_sqlite_with_wal_busy_timeout_and_immediate(tmp_path):
    s = settings_with(tmp_path)
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["name"] == str(tmp_path / "tunixrt.sqlite3")
    assert "journal_mode=WAL" in s["options"]["init_command"]
    assert s["options"]["transaction_mode"] == "IMMEDIATE"
    assert int(s["options"]["timeout"]) >= 5
    assert s["debug"] is False
    assert s["artifacts"] == str(tmp_path / "artifacts")


def test_database_url_switches_to_postgresql_through_psycopg(tmp_path):
    s = settings_with(tmp_path, DATABASE_URL="postgres://u:p@db.internal:6543/tunix")
    assert s["engine"] == "django.db.backends.postgresql"
    assert (s["name"], s["host"], s["port"]) == ("tunix", "db.internal", 6543)


def test_hosts_debug_and_dirs_come_from_the_environment(tmp_path):
    s = settings_with(
        tmp_path,
        DJANGO_DEBUG="1",
        DJANGO_ALLOWED_HOSTS="runs.example.com, other",
        TUNIXRT_ARTIFACTS_DIR=str(tmp_path / "elsewhere"),
    )
    assert s["debug"] is True
    assert s["hosts"] == ["runs.example.com", "other"]
    assert s["artifacts"] == str(tmp_path / "elsewhere")


def test_queue_retry_exceeds_timeout_which_exceeds_the_longest_run(tmp_path):
    s = settings_with(tmp_path, TUNIXRT_RUN_TIMEOUT_MAX="7200", TUNIXRT_MAX_CONCURRENT_RUNS="3")
    q = s["q"]
    assert q["retry"] > q["timeout"] > 7200
    assert q["workers"] == 3 and q["orm"] == "default"


def manage(tmp_path, *args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    base.update({"TUNIXRT_DATA_DIR": str(tmp_path), **env})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=base, capture_output=True, text=True
    )


def test_production_settings_pass_check_deploy(tmp_path):
    done = manage(
        tmp_path,
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SECRET_KEY="x" * 20 + "a-long-random-production-secret-key-0123456789",
        DJANGO_ALLOWED_HOSTS="runs.example.com",
        TUNIXRT_HTTPS="1",
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_queue_retry_shorter_than_the_longest_run_refuses_to_start(tmp_path):
    # TUNIXRT_RUN_TIMEOUT above the maximum is a misconfiguration the startup check names.
    done = manage(tmp_path, "check", TUNIXRT_RUN_TIMEOUT="9999", TUNIXRT_RUN_TIMEOUT_MAX="100")
    assert done.returncode != 0
    assert "tunixrt.E003" in done.stderr


def test_a_boolean_setting_with_an_unknown_value_refuses_to_start(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    base.update(
        {"DJANGO_SETTINGS_MODULE": "tunixrt.settings", "TUNIXRT_DATA_DIR": str(tmp_path)},
        TUNIXRT_HTTPS="ture",
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=base, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "TUNIXRT_HTTPS='ture'" in done.stderr


def test_the_generated_secret_key_is_private(tmp_path):
    settings_with(tmp_path)
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
