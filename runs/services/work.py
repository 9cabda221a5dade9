"""What a worker does when woken: start one run on a free slot, then follow up."""

from __future__ import annotations

from .hosts import host_poll
from .jobs import job_after_finish
from .lifecycle import run_claim_next, run_execute_claimed


def run_start_next() -> str:
    """Claim the oldest pending run that fits a free slot of this host and run it. One run
    per task, so the queue's task timeout stays that of one run; if more runs wait, this
    host is woken again at once."""
    run = run_claim_next()
    if run is None:
        return "nothing to start"
    outcome = run_execute_claimed(run=run)
    after = job_after_finish(run_id=run.id)
    host_poll()
    return f"run {run.id}: {outcome}; {after}"
