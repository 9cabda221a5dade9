"""Every state change of runs and tokens. Pages, the API, the admin, management commands and
queue tasks call these; none of them holds logic of its own. Datasets have their own in
`runs.datasets.services`.

Modules: `runs` (creation: plan, create, rerun, resume), `lifecycle` (enqueue, claim,
prepare, supervise, finish, cancel, reap), `deletion` (delete, prune, pin), `retention` (the
batched pruning behind `runs_prune`), `folder_removal` (run folders, after their rows),
`tokens`, `schedules`, `hosts` (worker hosts: beat, probe, wake, poll), `work` (a woken
worker starts one run), `jobs` (evaluations and exports of a trained run), `playground`
(prompts answered by a trained run and its base model)."""

from ..formatting import plan_sentence
from .deletion import run_delete, run_set_pinned, runs_prune, runs_prune_expired
from .hosts import host_beat, host_loop, host_probe_devices, hosts_wake, mesh_fits_hosts
from .jobs import evaluation_create, evaluation_store_rows, export_create, job_after_finish
from .lifecycle import (
    reaper_loop,
    run_cancel,
    run_claim,
    run_claim_next,
    run_enqueue,
    run_execute,
    run_execute_claimed,
    run_finish,
    run_heartbeat_is_stale,
    run_prepare,
    runs_cancel_supervised_by,
    runs_reap,
)
from .model_registry import model_catalogue, model_delete
from .playground import prompt_answer, prompt_submit, prompt_wait, render_prompt
from .runs import (
    RunPlan,
    RunRequest,
    continued_name,
    run_create,
    run_plan,
    run_request,
    run_rerun,
    run_resume,
)
from .schedules import schedules_ensure
from .tokens import api_token_authenticate, api_token_create, api_token_revoke, token_hash
from .work import run_start_next

__all__ = [
    "RunPlan",
    "RunRequest",
    "plan_sentence",
    "run_plan",
    "run_create",
    "run_request",
    "run_rerun",
    "run_resume",
    "continued_name",
    "run_enqueue",
    "run_claim",
    "run_claim_next",
    "run_execute_claimed",
    "run_start_next",
    "host_beat",
    "host_loop",
    "host_probe_devices",
    "hosts_wake",
    "mesh_fits_hosts",
    "run_finish",
    "run_heartbeat_is_stale",
    "run_prepare",
    "run_execute",
    "run_cancel",
    "runs_reap",
    "runs_cancel_supervised_by",
    "reaper_loop",
    "run_delete",
    "runs_prune",
    "runs_prune_expired",
    "run_set_pinned",
    "token_hash",
    "api_token_create",
    "api_token_authenticate",
    "api_token_revoke",
    "schedules_ensure",
    "evaluation_create",
    "model_catalogue",
    "model_delete",
    "prompt_answer",
    "prompt_submit",
    "prompt_wait",
    "render_prompt",
    "evaluation_store_rows",
    "export_create",
    "job_after_finish",
]
