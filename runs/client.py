"""`tunixrt`: a small command-line client of the JSON API.

It uses only the public HTTP API and the standard library, so it works from any machine
that can reach the server, without Django. The server and the token come from the
environment:

    export TUNIXRT_URL=http://127.0.0.1:8000
    export TUNIXRT_TOKEN=$(python manage.py create_api_token alice)
    tunixrt submit sample-v1 local:tiny-llama3 --local --set max_steps=30 --follow
    tunixrt list --status running
    tunixrt logs RUN_ID --follow
    tunixrt generate RUN_ID "What is 2 + 3?"    # and eval, export: runs/client_trained.py

Exit status: 0 on success; 1 when the server refuses the request (the error is printed);
2 for a usage or connection problem. `logs --follow` (and `submit --follow`) exit 0 only
when the run completed, 1 when it failed, timed out or was cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from runs import client_trained

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "tunixrt-client/1"


class ApiError(Exception):
    """The server answered with an error (its JSON error shape)."""

    def __init__(self, status: int, detail: Any, fields: dict[str, str] | None = None):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.detail = detail
        self.fields = fields or {}

    def describe(self) -> str:
        detail = self.detail
        if isinstance(detail, list):  # schema errors: the field messages say it better
            detail = "the request is not valid"
        lines = [f"error: HTTP {self.status}: {detail}"]
        lines += [f"  {name}: {message}" for name, message in sorted(self.fields.items())]
        return "\n".join(lines)


class UsageError(Exception):
    pass


class Client:
    """Calls to the API; one method per endpoint the commands use."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0):
        if urllib.parse.urlsplit(base_url).scheme not in ("http", "https"):
            raise UsageError(f"TUNIXRT_URL must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, *, query=None, body=None, raw=False, timeout=None):
        url = f"{self.base_url}/api{path}"
        if query:
            query = {k: v for k, v in query.items() if v is not None}
            url += "?" + urllib.parse.urlencode(query)
        data = None
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        # The scheme was checked in __init__: only http(s) URLs are opened.
        request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:  # noqa: S310
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UsageError(f"cannot reach {self.base_url}: {reason}") from None
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def run_create(self, body: dict) -> dict:
        return self.request("POST", "/tunix/run", body=body)

    def runs(self, **filters) -> dict:
        return self.request("GET", "/tunix/runs", query=filters)

    def run(self, run_id: str) -> dict:
        return self.request("GET", f"/tunix/runs/{_quote(run_id)}")

    def logs(self, run_id: str, *, after: int = 0, limit: int = 1000) -> dict:
        query = {"after": after, "limit": limit}
        return self.request("GET", f"/tunix/runs/{_quote(run_id)}/logs", query=query)

    def log_text(self, run_id: str) -> bytes:
        return self.request("GET", f"/tunix/runs/{_quote(run_id)}/logs.txt", raw=True)

    def cancel(self, run_id: str) -> dict:
        return self.request("POST", f"/tunix/runs/{_quote(run_id)}/cancel")

    def rerun(self, run_id: str, changes: dict) -> dict:
        return self.request("POST", f"/tunix/runs/{_quote(run_id)}/rerun", body=changes)

    def resume(self, run_id: str, max_steps: int) -> dict:
        body = {"max_steps": max_steps}
        return self.request("POST", f"/tunix/runs/{_quote(run_id)}/resume", body=body)

    def delete(self, run_id: str) -> dict:
        return self.request("DELETE", f"/tunix/runs/{_quote(run_id)}")


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _api_error(exc: urllib.error.HTTPError) -> ApiError:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return ApiError(exc.code, body.get("detail") or exc.reason, body.get("fields"))


# --- output -----------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _summary(run: dict) -> str:
    progress = ""
    if run.get("progress_step") is not None and run.get("progress_total"):
        progress = f" step {run['progress_step']}/{run['progress_total']}"
    name = f" {run['name']!r}" if run.get("name") else ""
    return (
        f"{run['id']}  {run['status']:<9} {run['mode']:<7} {run['model_id']} on "
        f"{run['dataset_key']}{progress}{name}"
    )


def _print_run(run: dict) -> None:
    print(_summary(run))
    if run.get("message"):
        print(f"  {run['message']}")
    print(f"  created {run['created_at']}  output {run['output_dir']}")
    if run.get("parent_id"):
        print(f"  continues {run['parent_id']}")


# --- commands ---------------------------------------------------------------------------


def _parse_settings(pairs: list[str]) -> dict[str, Any]:
    """NAME=VALUE pairs; values are read as JSON when they can be (numbers, null)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--set takes NAME=VALUE, not {pair!r}")
        try:
            values[name] = json.loads(raw)
        except ValueError:
            values[name] = raw
    return values


def _show_new_run(client: Client, run: dict, args) -> int:
    """Print a run just created (submit, rerun, resume) and follow it when asked."""
    if args.json:
        _print_json(run)
    else:
        _print_run(run)
    if getattr(args, "follow", False):
        return follow(client, run["id"], interval=args.interval)
    return 0


def cmd_submit(client: Client, args) -> int:
    body = {
        "dataset_key": args.dataset,
        "model_id": args.model,
        "dry_run": not args.local,
        **_parse_settings(args.set),
    }
    if args.name is not None:
        body["name"] = args.name
    if args.method is not None:
        body["method"] = args.method
    if args.base_run is not None:
        body["base_run_id"] = args.base_run
    if args.timeout is not None:
        body["timeout_seconds"] = args.timeout
    run = client.run_create(body)
    return _show_new_run(client, run, args)


def cmd_list(client: Client, args) -> int:
    page = client.runs(
        status=args.status,
        mode=args.mode,
        dataset_key=args.dataset,
        model_id=args.model,
        q=args.search,
        cursor=args.cursor,
        page=None if args.cursor else args.page,
        page_size=args.page_size,
    )
    if args.json:
        _print_json(page)
        return 0
    for run in page["items"]:
        print(_summary(run))
    total = f"{page['count']} runs" if page["count_exact"] else f"more than {page['count']} runs"
    where = f"page {page['page']} of {page['pages']}, " if page.get("pages") else ""
    print(f"{where}{total}")
    if page.get("next_cursor"):
        print(f"older runs: --cursor {page['next_cursor']}")
    return 0


def cmd_show(client: Client, args) -> int:
    run = client.run(args.run_id)
    if args.json:
        _print_json(run)
    else:
        _print_run(run)
    return 0


def follow(client: Client, run_id: str, *, interval: float, out=None) -> int:
    """Print the log as it grows until the run has ended and everything was read."""
    out = out or sys.stdout
    after = 0
    while True:
        page = client.logs(run_id, after=after)
        for chunk in page["chunks"]:
            out.write(chunk["text"])
        out.flush()
        after = page["next_after"]
        if page["has_more"]:
            continue
        if page["final"]:
            print(f"[tunixrt] run {run_id} {page['status']}", file=sys.stderr)
            return 0 if page["status"] == "completed" else 1
        time.sleep(interval)


def cmd_logs(client: Client, args) -> int:
    if args.follow:
        return follow(client, args.run_id, interval=args.interval)
    sys.stdout.buffer.write(client.log_text(args.run_id))
    sys.stdout.flush()
    return 0


def cmd_cancel(client: Client, args) -> int:
    run = client.cancel(args.run_id)
    if args.json:
        _print_json(run)
    elif run["status"] == "cancelled":
        print(f"{run['id']} cancelled")
    else:
        print(f"{run['id']} cancel requested; it stops within the grace period")
    return 0


def cmd_rerun(client: Client, args) -> int:
    changes = _parse_settings(args.set)
    if args.name is not None:
        changes["name"] = args.name
    if args.mode is not None:
        changes["dry_run"] = args.mode == "dry-run"
    run = client.rerun(args.run_id, changes)
    return _show_new_run(client, run, args)


def cmd_resume(client: Client, args) -> int:
    run = client.resume(args.run_id, args.max_steps)
    return _show_new_run(client, run, args)


def cmd_delete(client: Client, args) -> int:
    result = client.delete(args.run_id)
    print(f"{result['id']} deleted ({result['freed_bytes']} bytes freed)")
    return 0


# long: the argparse declarations of every subcommand, one after another.
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunixrt",
        description="Command-line client of the tunix-rt API. Reads TUNIXRT_URL "
        f"(default {DEFAULT_URL}) and TUNIXRT_TOKEN from the environment.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(func=func)
        sub.add_argument("--json", action="store_true", help="print the API's JSON")
        return sub

    def following(sub):
        sub.add_argument("--follow", action="store_true", help="then stream its log to the end")
        sub.add_argument("--interval", type=float, default=1.0, help="seconds between polls")

    settings_help = "a hyperparameter, e.g. --set max_steps=30 (repeatable)"
    sub = command("submit", cmd_submit, "create a run (a dry-run unless --local)")
    sub.add_argument("dataset", help="dataset key, e.g. sample-v1")
    sub.add_argument("model", help="model reference, e.g. local:NAME or ORG/NAME")
    sub.add_argument("--local", action="store_true", help="queue real training")
    sub.add_argument("--method", choices=["sft", "dpo", "orpo", "grpo"], help="default: sft")
    sub.add_argument("--base-run", metavar="RUN_ID", help="start from this run's result")
    sub.add_argument("--name")
    sub.add_argument("--timeout", type=int, help="seconds before the run is stopped")
    sub.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help=settings_help)
    following(sub)

    sub = command("list", cmd_list, "list runs, newest first")
    sub.add_argument("--status")
    sub.add_argument("--mode", choices=["dry-run", "local"])
    sub.add_argument("--dataset")
    sub.add_argument("--model")
    sub.add_argument("-q", "--search", help="text in name, model, dataset or message")
    sub.add_argument("--cursor", help="the next page: the cursor the previous one printed")
    sub.add_argument("--page", type=int, default=1, help="by number (the first 10,000 runs)")
    sub.add_argument("--page-size", type=int, default=25)

    run_id_help = "the run's id, or its first characters (6 or more) if no other run shares them"
    sub = command("show", cmd_show, "show one run")
    sub.add_argument("run_id", help=run_id_help)

    sub = command("logs", cmd_logs, "print a run's log")
    sub.add_argument("run_id", help=run_id_help)
    following(sub)

    sub = command("cancel", cmd_cancel, "cancel a pending or running run")
    sub.add_argument("run_id", help=run_id_help)

    sub = command("rerun", cmd_rerun, "a new run from the same inputs, optionally changed")
    sub.add_argument("run_id", help=run_id_help)
    sub.add_argument("--name")
    sub.add_argument("--mode", choices=["dry-run", "local"], help="default: the same mode")
    sub.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help=settings_help)
    following(sub)

    sub = command("resume", cmd_resume, "continue a run from its latest complete checkpoint")
    sub.add_argument("run_id", help=run_id_help)
    sub.add_argument("--max-steps", type=int, required=True)
    following(sub)

    sub = command("delete", cmd_delete, "delete a finished run with its logs and files")
    sub.add_argument("run_id", help=run_id_help)
    client_trained.add_commands(command, run_id_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    token = os.environ.get("TUNIXRT_TOKEN", "")
    if not token:
        print(
            "error: set TUNIXRT_TOKEN (create one with `manage.py create_api_token USER`)",
            file=sys.stderr,
        )
        return 2
    try:
        client = Client(os.environ.get("TUNIXRT_URL") or DEFAULT_URL, token)
        return args.func(client, args)
    except ApiError as exc:
        print(exc.describe(), file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
