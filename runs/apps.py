"""The runs app: checks, the reaper thread of each worker process, the recurring schedules."""

import threading

from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Tunix runs"

    def ready(self):
        from django_q.signals import post_spawn

        checks.register(check_queue_timing, checks.Tags.compatibility)
        post_spawn.connect(start_reaper_thread, dispatch_uid="tunixrt-reaper")
        post_migrate.connect(_ensure_schedules, sender=self, dispatch_uid="tunixrt-schedules")


def _ensure_schedules(**kwargs):
    from runs import services

    services.schedules_ensure()


_reaper_started = False


def start_reaper_thread(**kwargs) -> None:
    """Reap at worker start, then every TUNIXRT_REAPER_INTERVAL_SECONDS, in a daemon thread
    of the worker: it keeps running while the worker's main thread supervises a long run."""
    global _reaper_started
    # django-q2 also sends post_spawn when it runs a task inline (sync mode, in the web or
    # test process); housekeeping belongs to real worker processes only.
    if _reaper_started or kwargs.get("proc_name") == "MainProcess":
        return
    _reaper_started = True
    from runs import services

    threading.Thread(target=services.reaper_loop, name="tunixrt-reaper", daemon=True).start()
    # Register this host, probe its devices, and poll for pending runs while a slot is free.
    threading.Thread(target=services.host_loop, name="tunixrt-host", daemon=True).start()


def check_queue_timing(app_configs, **kwargs):
    """A task lives as long as its run. If the queue's retry came before the task timeout,
    or the timeout before the longest allowed run, a running task would be handed to a second
    worker. django-q2 only warns about the first; we refuse to start."""
    from django.conf import settings

    q = settings.Q_CLUSTER
    errors = []
    if not q.get("timeout") or q["timeout"] <= settings.RUN_TIMEOUT_MAX:
        errors.append(
            checks.Error(
                "Q_CLUSTER['timeout'] must exceed TUNIXRT_RUN_TIMEOUT_MAX.", id="tunixrt.E001"
            )
        )
    if not q.get("retry") or q["retry"] <= (q.get("timeout") or 0):
        errors.append(
            checks.Error("Q_CLUSTER['retry'] must exceed Q_CLUSTER['timeout'].", id="tunixrt.E002")
        )
    if settings.RUN_TIMEOUT_DEFAULT > settings.RUN_TIMEOUT_MAX:
        errors.append(
            checks.Error(
                "TUNIXRT_RUN_TIMEOUT must not exceed TUNIXRT_RUN_TIMEOUT_MAX.", id="tunixrt.E003"
            )
        )
    return errors
