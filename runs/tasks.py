"""Queue entry points: load by id, call a service. Named by dotted path in django-q2."""

from runs import services


def start_runs() -> str:
    """A wake-up: start the oldest pending run that fits a free slot of this host."""
    return services.run_start_next()


def execute_run(run_id: str) -> str:
    """Tasks queued before wake-ups (an upgrade with runs in the queue): the same work."""
    return services.run_start_next()


def reap_runs() -> str:
    return services.runs_reap()


def prune_runs() -> str:
    return services.runs_prune_expired()


def answer_prompt(prompt_id: str) -> str:
    return services.prompt_answer(prompt_id=prompt_id)
