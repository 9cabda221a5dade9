"""`tunixrt eval`, `tunixrt generate` and `tunixrt export`: use a completed run.

Standard library only, like runs/client.py, which adds these commands to its parser. The
functions take the client object of runs/client.py (its `request` method) and the parsed
arguments, and return the exit status: 0 when the evaluation or export completed (or was
queued, without --wait) and the prompt was answered; 1 otherwise.

    tunixrt eval 3f2a9c1b --max-rows 20 --wait
    tunixrt generate 3f2a9c1b "What is 2 + 3?" --max-new-tokens 32
    tunixrt export 3f2a9c1b --name my-model --wait
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from typing import Any

FINAL_STATUSES = ("completed", "failed", "timeout", "cancelled")
WAIT_STEP_SECONDS = 30  # the API waits for an answer up to 60 s per request


def _quote(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _generation(args) -> dict[str, Any]:
    names = ("max_new_tokens", "temperature", "top_p", "seed")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _job_line(job: dict, what: str) -> str:
    return f"{job['id']}  {job['status']:<9} {what} of {job['source_id']}"


def wait_for_job(client, job_id: str, *, interval: float) -> dict:
    """Poll a job until it has ended; its status and progress go to stderr as they change."""
    shown = None
    while True:
        job = client.request("GET", f"/tunix/runs/{_quote(job_id)}")
        state = (job["status"], job.get("progress_step"), job.get("progress_total"))
        if state != shown:
            progress = f" {state[1]}/{state[2]}" if state[1] is not None and state[2] else ""
            print(f"[tunixrt] {job_id} {state[0]}{progress}", file=sys.stderr)
            shown = state
        if job["status"] in FINAL_STATUSES:
            return job
        time.sleep(interval)


def _ended(job: dict) -> int:
    if job["status"] == "completed":
        return 0
    message = f": {job['message']}" if job.get("message") else ""
    print(f"error: {job['id']} {job['status']}{message}", file=sys.stderr)
    print(f"  its log: tunixrt logs {job['id']}", file=sys.stderr)
    return 1


def cmd_eval(client, args) -> int:
    body: dict[str, Any] = _generation(args)
    if args.dataset is not None:
        body["dataset_key"] = args.dataset
    if args.max_rows is not None:
        body["max_rows"] = args.max_rows
    job = client.request("POST", f"/tunix/runs/{_quote(args.run_id)}/evaluations", body=body)
    if not args.wait:
        if args.json:
            _print_json(job)
        else:
            print(_job_line(job, "evaluation"))
        return 0
    job = wait_for_job(client, job["id"], interval=args.interval)
    if job["status"] != "completed":
        return _ended(job)
    result = client.request("GET", f"/tunix/evaluations/{_quote(job['id'])}")
    if args.json:
        _print_json(result)
        return 0
    print(_job_line(job, "evaluation"))
    print(f"  {job['dataset_key']}, {len(result['rows'])} rows")
    scores = result["scores"]
    names = sorted(set(scores.get("base", {})) | set(scores.get("tuned", {})))
    width = max([len(name) for name in names] + [5])
    print(f"  {'score':<{width}}  {'base':>8}  {'tuned':>8}")
    for name in names:
        base, tuned = scores.get("base", {}).get(name), scores.get("tuned", {}).get(name)
        print(f"  {name:<{width}}  {_number(base):>8}  {_number(tuned):>8}")
    changes = result.get("changes") or {}
    if changes:
        print("  rows: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in changes.items()))
    return 0


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def cmd_generate(client, args) -> int:
    """Submit the prompt, then wait for both answers (up to --timeout seconds)."""
    deadline = time.monotonic() + args.timeout
    wait = max(1, min(WAIT_STEP_SECONDS, int(args.timeout)))
    body = {"prompt": args.prompt, **_generation(args)}
    record = client.request(
        "POST",
        f"/tunix/runs/{_quote(args.run_id)}/prompts",
        query={"wait": wait},
        body=body,
        timeout=wait + 30,
    )
    told = False
    while record["status"] == "pending":
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"error: no answer after {args.timeout:g} s; prompt {record['id']}", file=sys.stderr
            )
            return 1
        if not told:
            print(
                "[tunixrt] waiting for the worker (the first prompt loads the models)",
                file=sys.stderr,
            )
            told = True
        wait = max(1, min(WAIT_STEP_SECONDS, int(left)))
        path = f"/tunix/prompts/{_quote(record['id'])}"
        record = client.request("GET", path, query={"wait": wait}, timeout=wait + 30)
    if args.json:
        _print_json(record)
        return 0 if record["status"] == "done" else 1
    if record["status"] != "done":
        print(f"error: the prompt {record['status']}: {record['error']}", file=sys.stderr)
        return 1
    if args.show_prompt:
        print(f"--- prompt as the models saw it\n{record['rendered_prompt']}")
    print(f"--- fine-tuned\n{record['tuned_output']}")
    print(f"--- base\n{record['base_output']}")
    cold = ", loaded the models and compiled" if record["cold"] else ""
    print(f"[tunixrt] answered in {record['seconds']} s on the worker{cold}", file=sys.stderr)
    return 0


def cmd_export(client, args) -> int:
    body = {"name": args.name} if args.name else {}
    job = client.request("POST", f"/tunix/runs/{_quote(args.run_id)}/exports", body=body)
    if args.wait:
        job = wait_for_job(client, job["id"], interval=args.interval)
        if job["status"] != "completed":
            return _ended(job)
    if args.json:
        _print_json(job)
    else:
        print(f"{_job_line(job, 'export')}  -> local:{job['name']}")
    return 0


def add_commands(command, run_id_help: str) -> None:
    """Declare the three subcommands; `command(name, func, help)` makes one (runs/client.py)."""

    def generation(sub):
        sub.add_argument("--max-new-tokens", type=int, help="default 64")
        sub.add_argument("--temperature", type=float, help="0 (the default) is greedy")
        sub.add_argument("--top-p", type=float)
        sub.add_argument("--seed", type=int)

    def waiting(sub, what):
        sub.add_argument("--wait", action="store_true", help=f"wait until the {what} has ended")
        sub.add_argument("--interval", type=float, default=2.0, help="seconds between polls")

    sub = command("eval", cmd_eval, "evaluate a completed run by generation (tuned vs base)")
    sub.add_argument("run_id", help=run_id_help)
    sub.add_argument("--dataset", help="another dataset's key (all its rows); default: held out")
    sub.add_argument("--max-rows", type=int, help="rows to evaluate (default 50)")
    generation(sub)
    waiting(sub, "evaluation")

    sub = command("generate", cmd_generate, "ask a completed run and its base model a prompt")
    sub.add_argument("run_id", help=run_id_help)
    sub.add_argument("prompt", help="the user's message; the run's chat template is applied")
    generation(sub)
    sub.add_argument("--timeout", type=float, default=600, help="seconds to wait (default 600)")
    sub.add_argument("--show-prompt", action="store_true", help="print the rendered prompt")

    sub = command("export", cmd_export, "export a completed run as a Hugging Face folder")
    sub.add_argument("run_id", help=run_id_help)
    sub.add_argument("--name", help="the local model's name (local:NAME); default: derived")
    waiting(sub, "export")
