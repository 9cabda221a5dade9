"""The playground of a completed run: a prompt, rendered with the chat template the run trained
with, answered by the fine-tuned and the base model. The web side records the prompt and
queues it; a worker hands it to its host's generation server (runs/playground_server.py),
which keeps recently used models loaded, and stores the answers. The web never imports JAX."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import playground_server, protocol, storage
from ..errors import InvalidInput
from ..models import PlaygroundPrompt, TunixRun
from ..processes import this_host
from .jobs import _check_source, _source_section, db_text, generation_settings

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 20_000
PLACEHOLDER = "\u2026"


def render_prompt(run: TunixRun, prompt: str) -> str:
    """The text the models are given: the user's message in the run's chat template (the
    checkpoint's own when it has one, else the family's built-in), up to the assistant's turn."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": PLACEHOLDER}]
    model_dir = (run.config.get("model") or {}).get("path") or ""
    template, tokens = protocol.read_chat_template(model_dir) if model_dir else (None, {})
    try:
        segments = protocol.render_chat(run.model_family, messages, template, tokens)
    except (protocol.TemplateError, ImportError):
        segments = protocol.render_builtin(run.model_family, messages)
    return protocol.split_segments(segments)[0]


def _playground_settings(values: dict | None) -> dict:
    values = {k: v for k, v in (values or {}).items() if k != "max_rows"}
    return {k: v for k, v in generation_settings(values).items() if k != "max_rows"}


@transaction.atomic
def prompt_submit(*, run: TunixRun, owner, prompt: str, generation: dict | None = None):
    """Record a prompt for a completed run and queue its answer."""
    _check_source(run)
    prompt = str(prompt or "")
    if not prompt.strip():
        raise InvalidInput("Write a prompt.", fields={"prompt": "Enter a prompt."})
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidInput(
            "The prompt is too long.", fields={"prompt": f"At most {MAX_PROMPT_CHARS} characters."}
        )
    record = PlaygroundPrompt.objects.create(
        run=run,
        owner=owner,
        prompt=prompt,
        rendered_prompt=render_prompt(run, prompt),
        generation=_playground_settings(generation),
    )
    transaction.on_commit(lambda: _enqueue(record.id, run.worker_host))
    return record


def _enqueue(prompt_id, host: str | None) -> None:
    """To a live worker host's queue (each host's cluster reads only its own)."""
    from django_q.tasks import async_task

    from .hosts import live_queue

    async_task(
        "runs.tasks.answer_prompt",
        str(prompt_id),
        task_name=f"prompt-{prompt_id}",
        cluster=live_queue(host),
    )


def prompt_answer(*, prompt_id) -> str:
    """On a worker: ask this host's generation server; store the answers or the error."""
    record = PlaygroundPrompt.objects.select_related("run").filter(id=prompt_id).first()
    if record is None or record.status != PlaygroundPrompt.Status.PENDING:
        return "nothing to do"
    request = {
        "source": _source_section(record.run),
        "prompt": record.rendered_prompt,
        "settings": record.generation,
    }
    started = time.monotonic()
    reply = _generate(request)
    if reply.get("missing_checkpoint"):
        # The server has not loaded this run's model and the checkpoint is not on this host:
        # with an object store, its newest step is staged for this prompt, then removed.
        with storage.run_checkpoint_staged(record.run, f"prompt-{record.id}") as staged:
            if staged:
                reply = _generate({**request, "source": {**request["source"], **staged}})
    fields = {
        "finished_at": timezone.now(),
        "worker_host": this_host(),
        "seconds": round(time.monotonic() - started, 4),
    }
    if reply.get("ok"):
        fields.update(
            status=PlaygroundPrompt.Status.DONE,
            tuned_output=db_text(reply.get("tuned", "")),
            base_output=db_text(reply.get("base", "")),
            cold=bool(reply.get("cold")),
        )
    else:
        error = db_text(reply.get("error"))[:4000]
        fields.update(status=PlaygroundPrompt.Status.FAILED, error=error)
    PlaygroundPrompt.objects.filter(id=record.id, status=PlaygroundPrompt.Status.PENDING).update(
        **fields
    )
    return f"prompt {fields['status']} in {fields['seconds']} s"


def _generate(request: dict) -> dict:
    try:
        return playground_server.generate(request, timeout=settings.PLAYGROUND_TIMEOUT_SECONDS)
    except playground_server.ServerError as exc:
        return {"ok": False, "error": str(exc)}


def prompt_wait(record: PlaygroundPrompt, *, timeout: float) -> PlaygroundPrompt:
    """The prompt once answered (or failed), or as it is after `timeout` seconds."""
    deadline = time.monotonic() + max(0.0, min(timeout, 60.0))
    while record.status == PlaygroundPrompt.Status.PENDING and time.monotonic() < deadline:
        time.sleep(0.05)
        record.refresh_from_db()
    return record
