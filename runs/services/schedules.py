"""The recurring queue jobs (reaper, retention), created or updated by name."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone


def schedules_ensure() -> None:
    """The recurring queue jobs, created or updated by name: safe to run any number of times."""
    from django_q.models import Schedule

    Schedule.objects.update_or_create(
        name="tunixrt-reaper",
        defaults={
            "func": "runs.tasks.reap_runs",
            "schedule_type": Schedule.MINUTES,
            "minutes": max(1, settings.REAPER_INTERVAL_SECONDS // 60),
            "repeats": -1,
        },
    )
    # Daily retention. The first pass is set for the coming night (03:00 in TIME_ZONE);
    # later migrations update the schedule by name but never move its next run.
    Schedule.objects.update_or_create(
        name="tunixrt-retention",
        defaults={
            "func": "runs.tasks.prune_runs",
            "schedule_type": Schedule.DAILY,
            "repeats": -1,
        },
        create_defaults={
            "func": "runs.tasks.prune_runs",
            "schedule_type": Schedule.DAILY,
            "repeats": -1,
            "next_run": _next_quiet_hour(),
        },
    )


def _next_quiet_hour(hour: int = 3):
    now = timezone.localtime()
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return at if at > now else at + timedelta(days=1)
