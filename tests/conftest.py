import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client

from runs import hyperparameters, services, training
from runs.datasets import services as dataset_services

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "runs" / "sample_data" / "reasoning-sample.jsonl"
PROGRAMS = Path(__file__).resolve().parent / "programs"
# Debian's chromium drives the browser tests (another path: TUNIXRT_CHROMIUM).
CHROMIUM = os.environ.get("TUNIXRT_CHROMIUM", "/usr/bin/chromium")


# Optional parts of the suite. Each runs unless the user chose to leave it out with its
# variable; a part that is missing without that choice fails with the way to install it,
# so a test never passes by being skipped silently.
OPTIONAL_PARTS = {
    "tunix": (
        "TUNIXRT_SKIP_TUNIX",
        "the tunix extra (Tunix, JAX, tokenizers)",
        "pip install -e '.[tunix]' (make test does)",
    ),
    "browser": (
        "TUNIXRT_SKIP_BROWSER",
        "Debian's chromium and Playwright",
        "apt-get install chromium; pip install -e '.[dev]' (make test does)",
    ),
}


def _part_missing(part: str) -> bool:
    if part == "tunix":
        from importlib.metadata import PackageNotFoundError, version

        try:
            version("google-tunix")
            version("tokenizers")
        except PackageNotFoundError:
            return True
        return False
    import importlib.util

    return not os.path.exists(CHROMIUM) or not importlib.util.find_spec("playwright")


def _needs(item) -> list[str]:
    parts = [part for part in OPTIONAL_PARTS if part in item.keywords]
    if "tokenizer_model" in getattr(item, "fixturenames", ()) and "tunix" not in parts:
        parts.append("tunix")  # the tokenizers package comes with the tunix extra
    return parts


def pytest_collection_modifyitems(config, items):
    """A test that needs an optional part is skipped when the user left that part out
    (TUNIXRT_SKIP_TUNIX=1, TUNIXRT_SKIP_BROWSER=1), and fails saying what to install when
    the part is missing without that choice."""
    for item in items:
        for part in _needs(item):
            variable, what, install = OPTIONAL_PARTS[part]
            if os.environ.get(variable) == "1":
                item.add_marker(pytest.mark.skip(reason=_left_out(part)))
            elif _part_missing(part):
                message = f"needs {what}: {install}, or set {variable}=1 to skip these tests"
                item.stash[_MISSING_PART] = message


def _left_out(part: str) -> str:
    variable, what, _ = OPTIONAL_PARTS[part]
    return f"{variable}=1: {what} left out"


_MISSING_PART = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture (a browser fixture would fail in its own words): say what to
    install."""
    message = item.stash.get(_MISSING_PART, None)
    if message:
        pytest.fail(message, pytrace=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Count the skips by choice from the reports, which reach this process from every
    worker process too when the suite runs in parallel (pytest-xdist)."""
    skipped: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        for part in OPTIONAL_PARTS:
            if _left_out(part) in reason:
                skipped[part] = skipped.get(part, 0) + 1
    for part, count in skipped.items():
        variable, what, _ = OPTIONAL_PARTS[part]
        terminalreporter.write_line(
            f"Skipped by choice: {count} test{'s that need' if count != 1 else ' that needs'} "
            f"{what} ({variable}=1).",
            yellow=True,
        )


def pytest_sessionstart(session):
    """One JAX compilation cache for the whole session, as a host has one (module fixtures
    see it too): the tests that train the same tiny shapes compile them once, which halves a
    tiny launch. Removed at the end."""
    from django.conf import settings

    settings.COMPILE_CACHE_DIR = tempfile.mkdtemp(prefix="tunixrt-test-compile-cache-")


def pytest_sessionfinish(session):
    from django.conf import settings

    if "tunixrt-test-compile-cache-" in settings.COMPILE_CACHE_DIR:
        shutil.rmtree(settings.COMPILE_CACHE_DIR, ignore_errors=True)


def wait_for(predicate, *, timeout=30.0, interval=0.05, message="condition"):
    """Poll until predicate() is truthy; return its value. Never a bare sleep in tests."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def isolated_dirs(settings, tmp_path):
    """Every test writes artifacts, datasets and models under its own folder."""
    for name in ("ARTIFACTS_DIR", "DATASETS_DIR", "MODELS_DIR"):
        folder = tmp_path / name.split("_")[0].lower()
        folder.mkdir()
        setattr(settings, name, folder)
    training._probe_cache.clear()
    # Cached answers are keyed by ids a new test database may hand out again.
    cache.clear()
    # Tests claim several runs in this process without finishing them: it stands in for a
    # host with enough slots (real workers get theirs from TUNIXRT_SLOTS, see start_cluster).
    settings.SLOTS = [[] for _ in range(8)]
    yield


@pytest.fixture(autouse=True)
def no_evaluation_after_runs(settings):
    """A completed real run queues no evaluation unless its test asks for one (it would cost
    the worker minutes of CPU); tests that want it pass "evaluate_after": true."""
    settings.EVALUATE_AFTER_RUN = False


@pytest.fixture(autouse=True)
def no_dry_run_rate_limit(settings):
    """Tests create many dry-runs a minute; the limit itself is tested with its own value
    (tests/test_dry_run_limits.py)."""
    settings.DRY_RUNS_PER_MINUTE = 0


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """PBKDF2's deliberate slowness costs a second per user on a busy machine; tests check
    who may do what, not how passwords are hashed."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user("carol", password="carol-pw-1", is_staff=True)


class ApiClient:
    """A Django test client that sends a bearer token and JSON."""

    def __init__(self, token: str | None):
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _call(self, method, path, data=None, **extra):
        kwargs = {"headers": {**self.headers, **extra.pop("headers", {})}}
        if data is not None:
            kwargs["data"] = json.dumps(data)
            kwargs["content_type"] = "application/json"
        elif method == "post":
            # No body at all, as curl -X POST sends (the test client would send a form).
            kwargs["data"] = b""
            kwargs["content_type"] = "application/json"
        return getattr(self.client, method)(path, **kwargs, **extra)

    def get(self, path, **extra):
        return self._call("get", path, **extra)

    def post(self, path, data=None, **extra):
        return self._call("post", path, data, **extra)

    def delete(self, path, **extra):
        return self._call("delete", path, **extra)


@pytest.fixture
def api(user):
    _, token = services.api_token_create(user=user, name="tests")
    return ApiClient(token)


@pytest.fixture
def anon_api():
    return ApiClient(None)


def import_dataset(name="sample", version="v1", path=SAMPLE, **kwargs):
    with open(path, "rb") as handle:
        return dataset_services.dataset_import(source=handle, name=name, version=version, **kwargs)


@pytest.fixture
def dataset(db):
    return import_dataset()


@pytest.fixture
def tiny_model_dir(settings):
    """A local model reference that parses (config.json only; enough for dry-runs)."""
    folder = Path(settings.MODELS_DIR) / "tiny-llama3"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "config.json").exists():  # a real generated model may be there already
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return "local:tiny-llama3"


@pytest.fixture
def tokenizer_model(tiny_model_dir, settings):
    """The tiny local model with a real byte-level BPE tokenizer.json beside its config
    (trained on the sample's strings; needs the `tokenizers` package of the tunix extra)."""
    from runs.launcher import tinymodel

    tokenizer = tinymodel.train_tokenizer(tinymodel.read_texts(SAMPLE), vocab_size=400)
    tokenizer.save(str(Path(settings.MODELS_DIR) / "tiny-llama3" / "tokenizer.json"))
    return tiny_model_dir


@pytest.fixture(scope="session")
def python_without_tunix(tmp_path_factory):
    """A real interpreter that has no Tunix: a bare virtual environment."""
    folder = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return str(folder / "bin" / "python")


@pytest.fixture
def run_factory(user, dataset, tiny_model_dir):
    """Create runs through the service, optionally with a real command as the child."""

    def make(*, owner=None, mode="dry-run", command=None, **kwargs):
        hp = {k: kwargs.pop(k) for k in list(kwargs) if k in hyperparameters.HYPERPARAMETERS}
        return services.run_create(
            owner=owner or user,
            dataset_key=kwargs.pop("dataset_key", dataset.key),
            model_id=kwargs.pop("model_id", tiny_model_dir),
            mode=mode,
            hyperparameters=hp,
            command=command,
            **kwargs,
        )

    return make


@pytest.fixture
def tiny_launcher(settings):
    """Local runs are accepted and execute tests/programs/tiny_launcher.py, a real program
    that speaks the launcher's protocol, instead of Tunix."""
    settings.TUNIX_LAUNCHER_MODULE = "tests.programs.tiny_launcher"
    training._probe_cache.clear()
    assert training.probe().available, training.probe().message
    return settings.TUNIX_LAUNCHER_MODULE


def py(code: str) -> list[str]:
    """argv of a small real Python child program."""
    return [sys.executable, "-c", code]


# --- real qcluster workers --------------------------------------------------------------


def database_env() -> dict[str, str]:
    """Environment that points a subprocess at the database the tests are using."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("postgresql"):
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        if db.get("PASSWORD"):
            url = f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        return {"DATABASE_URL": url}
    env = {"TUNIXRT_SQLITE_PATH": str(db["NAME"])}
    return env


class Cluster:
    def __init__(self, env: dict[str, str], log_path: Path):
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self):
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: b"ready for work" in self.log_path.read_bytes(),
            timeout=60,
            message="qcluster to start",
        )
        return self

    def worker_pids(self) -> list[int]:
        import psutil

        parent = psutil.Process(self.proc.pid)
        return [p.pid for p in parent.children(recursive=True)]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # SIGTERM to the cluster's main process only: it stops its own workers in
            # order (signalling the whole group at once makes it wait for the dead).
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture
def start_cluster(settings, tmp_path, transactional_db):
    """Start real `manage.py qcluster` processes against the test database."""
    clusters = []

    def start(*, workers: int = 2, name: str = "w", **overrides):
        env = {
            **os.environ,
            **database_env(),
            "TUNIXRT_ARTIFACTS_DIR": str(settings.ARTIFACTS_DIR),
            "TUNIXRT_DATASETS_DIR": str(settings.DATASETS_DIR),
            "TUNIXRT_MODELS_DIR": str(settings.MODELS_DIR),
            "TUNIXRT_COMPILE_CACHE_DIR": settings.COMPILE_CACHE_DIR,
            "TUNIXRT_MAX_CONCURRENT_RUNS": str(workers),
            "TUNIXRT_HEARTBEAT_SECONDS": "1",
            "TUNIXRT_HEARTBEAT_STALE_SECONDS": "4",
            "TUNIXRT_REAPER_INTERVAL_SECONDS": "1",
            "TUNIXRT_CANCEL_GRACE_SECONDS": "2",
            "TUNIXRT_QUEUE_POLL_SECONDS": "0.1",
            "TUNIXRT_IDLE_POLL_SECONDS": "0.2",
            # The device probe imports JAX (seconds of CPU); tests that need it turn it on.
            "TUNIXRT_PROBE_DEVICES": "0",
            "TUNIXRT_LOG_LEVEL": "INFO",
            "TUNIXRT_EVALUATE_AFTER_RUN": "0",
            **{k: str(v) for k, v in overrides.items()},
        }
        cluster = Cluster(env, tmp_path / f"qcluster-{name}-{len(clusters)}.log").start()
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()
