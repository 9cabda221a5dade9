"""Every command in the README's shell blocks, run as written against a live server and a
real worker (the `make` lines are what CI itself runs). Only what cannot be the same here
is rewritten: the server's address, `.venv` (this interpreter's environment) and RUN_ID
(the run the commands before it created; `show` gets the 8-character prefix the pages
show)."""

import os
import re
import subprocess
import sys

import pytest
from django.contrib.auth import get_user_model

from .conftest import REPO, database_env

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

NEWEST_RUN = (
    "RUN_ID=$(tunixrt list --json | python -c "
    '\'import json, sys; print(json.load(sys.stdin)["items"][0]["id"])\')'
)


def readme_commands() -> list[str]:
    """The commands of the README's ```sh blocks, continuation lines joined, comments and
    `make` lines left out."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command and not command.startswith(("#", "make ")):
                commands.append(command)
    return commands


def as_run_here(command: str, url: str) -> list[str]:
    command = command.replace("http://127.0.0.1:8000", url)
    command = command.replace(".venv/", f"{sys.prefix}/")
    command = command.replace("tunixrt show RUN_ID", 'tunixrt show "${RUN_ID:0:8}"')
    command = re.sub(r"(?<![{$])RUN_ID", '"$RUN_ID"', command)
    lines = [command]
    if command.startswith(("tunixrt submit", "tunixrt rerun")):
        lines.append(NEWEST_RUN)
    return lines


def test_the_readme_commands_work_as_written(
    live_server, start_cluster, settings, dataset, tiny_model_dir, tiny_launcher
):
    get_user_model().objects.create_superuser("admin", "", "admin-password-1")
    start_cluster(workers=1)
    commands = readme_commands()
    assert any(c.startswith("tunixrt show") for c in commands), commands
    assert any(c.startswith("curl") for c in commands), commands
    script = ["set -euo pipefail"]
    for number, command in enumerate(commands):
        script += [f"echo '>>> {number}'", *as_run_here(command, live_server.url)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNIXRT_", "DATABASE_URL"))}
    env.update(database_env(), TUNIXRT_ARTIFACTS_DIR=str(settings.ARTIFACTS_DIR))
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    ran = done.stdout.count(">>> ")
    assert done.returncode == 0, (commands[ran - 1], done.stdout[-3000:], done.stderr[-3000:])
    assert ran == len(commands)
    assert '"run_id"' in done.stdout  # the curl answer
