"""Keep-alive latency of the two servers the Makefile starts, on a small SQLite set-up.

Django's runserver (what `make run` starts) and gunicorn with gthread workers (what
`make serve` starts) answer `GET /api/health` and a run list over one kept-alive connection;
a client that sets TCP_NODELAY and TCP_QUICKACK on its side. An answer that waits for a
delayed ACK shows as a ~40 ms p50. Target: health <= 1.5 ms p50 on both.

Usage: python bench/http_probe.py [--samples 500] [--server runserver|gunicorn|both]
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _http import KeepAliveClient, measure, start_server, stop_server

REPO = Path(__file__).resolve().parent.parent


def prepare(data: Path) -> str:
    """Migrate a fresh SQLite database and make a user with a token; the token."""
    env = {**os.environ, "TUNIXRT_DATA_DIR": str(data), "TUNIXRT_LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    run("migrate", "--noinput", "-v", "0")
    run(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('probe', is_staff=True)",
    )
    return run("create_api_token", "probe").stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--server", choices=["runserver", "gunicorn", "both"], default="both")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="tunixrt-probe-"))
    token = prepare(data)
    env = {
        "TUNIXRT_DATA_DIR": str(data),
        "TUNIXRT_LOG_LEVEL": "WARNING",
        "TUNIXRT_WEB_WORKERS": "2",
        "DATABASE_URL": "",
    }
    kinds = ["runserver", "gunicorn"] if args.server == "both" else [args.server]
    print(f"{os.cpu_count()} cores; {args.samples} requests each on one kept-alive connection\n")
    print(f"{'server':<10} {'request':<22} {'p50 ms':>8} {'p95 ms':>8} {'reconnects':>11}")
    for kind in kinds:
        proc, port = start_server(kind, env, log=data / f"{kind}.log")
        try:
            client = KeepAliveClient(port)
            auth = {"Authorization": f"Bearer {token}"}
            for label, path, headers in (
                ("GET /api/health", "/api/health", None),
                ("GET /api/tunix/runs", "/api/tunix/runs", auth),
            ):
                p50, p95, _ = measure(client, [path], args.samples, headers)
                print(
                    f"{kind:<10} {label:<22} {p50:8.2f} {p95:8.2f} {client.reconnects:>11}",
                    flush=True,
                )
            client.close()
        finally:
            stop_server(proc)


if __name__ == "__main__":
    main()
