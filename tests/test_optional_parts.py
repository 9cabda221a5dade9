"""A test that needs an optional part (the tunix extra, the browser) runs when the part is
there, is skipped only when the user chose to leave it out (and the summary says so), and
fails with what to install when it is missing without that choice."""

import os
import subprocess
import sys

from .conftest import REPO

# One quick test of each lane: the browser lane with a chromium that is not there.
BROWSER_TEST = "tests/test_dataset_browser.py"


def pytest_run(*args, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUNIXRT_SKIP_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_part_fails_with_what_to_install():
    done = pytest_run(BROWSER_TEST, TUNIXRT_CHROMIUM="/nonexistent/chromium")
    assert done.returncode == 1, done.stdout
    assert "needs Debian's chromium and Playwright" in done.stdout
    assert "TUNIXRT_SKIP_BROWSER=1" in done.stdout


def test_a_part_left_out_by_choice_is_skipped_and_the_summary_says_so():
    done = pytest_run(
        BROWSER_TEST, TUNIXRT_CHROMIUM="/nonexistent/chromium", TUNIXRT_SKIP_BROWSER="1"
    )
    assert done.returncode == 0, done.stdout
    assert " skipped" in done.stdout and "passed" not in done.stdout
    assert "Skipped by choice: " in done.stdout
    assert "that need Debian's chromium" in done.stdout or "that needs Debian's chromium" in (
        done.stdout
    )
    done = pytest_run("tests/test_launcher.py", "-k", "not nothing", TUNIXRT_SKIP_TUNIX="1")
    assert done.returncode == 0, done.stdout
    assert "need the tunix extra (Tunix, JAX, tokenizers) (TUNIXRT_SKIP_TUNIX=1)" in (done.stdout)
