"""API and page latency over real HTTP, against the production server, at 100,000 runs.

Loads 100,000 runs (100 users, 90 days, every status) and 1,000,000 log chunks into
PostgreSQL (bench/_bench_data.py), starts the production server the way `make serve` does
(gunicorn, gthread workers, keep-alive: tunixrt/gunicorn_settings.py), and times each
operation over one kept-alive connection from a client with TCP_NODELAY and TCP_QUICKACK.
Prints p50/p95 and the answer size of each, next to the goal.

Usage: python bench/api_latency.py [--runs 100000] [--chunks 1000000] [--samples 300]
       [--keep] [--database NAME] [--workers 4]
A quick smoke: python bench/api_latency.py --runs 2000 --chunks 20000 --samples 30
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from _bench_data import BenchDatabase, add_arguments
from _http import KeepAliveClient, measure, start_server, stop_server

# (label, who, paths, goal p50 ms); who: "user", "staff", "session" (a logged-in browser)
# or None. Paths are filled in once the data is known.


def operations(facts, mine, mine_long):
    per_long = facts["per_long"]
    tail = max(0, per_long - 5)
    runs = "/api/tunix/runs?page_size=50"
    return [
        ("health (liveness, no database)", None, ["/api/health"], 1),
        ("list newest 50, a user's runs", "user", [runs], 5),
        ("list newest 50, staff (all runs)", "staff", [runs], 5),
        (
            "list 50, a user's, status filter",
            "user",
            [f"{runs}&status=completed", f"{runs}&status=failed", f"{runs}&status=running"],
            8,
        ),
        (
            "list 50, staff, status filter",
            "staff",
            [f"{runs}&status=running", f"{runs}&status=failed", f"{runs}&status=timeout"],
            8,
        ),
        (
            "list 50, staff, dataset / model / mode",
            "staff",
            [
                f"{runs}&dataset_key=set3-v1",
                f"{runs}&model_id=org4/llama-3-4b",
                f"{runs}&mode=dry-run",
            ],
            8,
        ),
        (
            "list 50, a user's, dataset + status",
            "user",
            [f"{runs}&dataset_key=set3-v1&status=completed", f"{runs}&model_id=org2/llama-3-2b"],
            8,
        ),
        ("get one run", "user", [f"/api/tunix/runs/{i}" for i in mine[:200]], 2),
        (
            "logs after a cursor (last 5 chunks)",
            "user",
            [f"/api/tunix/runs/{i}/logs?after={tail}" for i in mine_long],
            2,
        ),
        ("metric series of a run", "user", [f"/api/tunix/runs/{i}/metrics" for i in mine_long], 3),
        (
            "run page poll fragment (htmx)",
            "session-htmx",
            [f"/runs/{i}/?after={tail}&m=220" for i in mine_long],
            5,
        ),
        ("run list page (HTML)", "session", ["/"], 15),
    ]


def credentials(facts):
    """Headers for a token of a user, of staff, and a logged-in browser session."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from runs.services import api_token_create

    users = get_user_model().objects.in_bulk([facts["users"][1], facts["staff"]])
    user, staff = users[facts["users"][1]], users[facts["staff"]]
    browser = Client()
    browser.force_login(user)
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    return user, {
        "user": {"Authorization": f"Bearer {api_token_create(user=user)[1]}"},
        "staff": {"Authorization": f"Bearer {api_token_create(user=staff)[1]}"},
        "session": {"Cookie": cookie},
        "session-htmx": {"Cookie": cookie, "HX-Request": "true"},
        None: {},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--samples", type=int, default=300, help="requests per operation")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    args = parser.parse_args()
    with BenchDatabase(args) as data:
        from django.db import connection

        from runs.models import TunixRun

        user, headers = credentials(data.facts)
        mine = [str(i) for i in TunixRun.objects.filter(owner=user).values_list("id", flat=True)]
        long_ids = set(data.facts["long_runs"])
        mine_long = [i for i in mine if i in long_ids] or data.facts["long_runs"][:1]
        version = connection.pg_version // 10000
        connection.close()
        folder = Path(tempfile.mkdtemp(prefix="tunixrt-bench-web-"))
        env = data.server_env(args.workers)
        proc, port = start_server("gunicorn", env, log=folder / "gunicorn.log")
        try:
            client = KeepAliveClient(port)
            print(
                f"\nPostgreSQL {version}, {os.cpu_count()} cores, gunicorn gthread x"
                f"{args.workers}; {args.samples} requests each over one kept-alive connection\n"
            )
            print(f"{'operation':<42} {'p50 ms':>7} {'p95 ms':>7} {'KB':>6} {'goal':>6}")
            for label, who, paths, goal in operations(data.facts, mine, mine_long):
                p50, p95, size = measure(client, paths, args.samples, headers[who])
                print(
                    f"{label:<42} {p50:7.2f} {p95:7.2f} {size / 1024:6.1f} {goal:>6}",
                    flush=True,
                )
            print(f"\nreconnects: {client.reconnects}")
        finally:
            stop_server(proc)


if __name__ == "__main__":
    sys.exit(main())
