"""Queue entry points: load by id, call a service. Named by dotted path in django-q2."""

from runs import services


def execute_run(run_id: str) -> str:
    outcome = services.run_execute(run_id=run_id)
    return f"{outcome}; {services.job_after_finish(run_id=run_id)}"


def reap_runs() -> str:
    return services.runs_reap()


def prune_runs() -> str:
    return services.runs_prune_expired()


def answer_prompt(prompt_id: str) -> str:
    return services.prompt_answer(prompt_id=prompt_id)
