import json
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runs import services
from runs.errors import ServiceError


class ProgressBar:
    """`[#####.....]  1,234/10,000 runs` redrawn in place, at most ten times a second."""

    def __init__(self, out, width: int = 30):
        self.out = out
        self.width = width
        self.drawn_at = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        percent = 100 * done // total if total else 100
        self.out.write(f"\r[{bar}] {done:,}/{total:,} runs {percent:3d}%", ending="")
        self.out.flush()

    def close(self) -> None:
        self.out.write("")


class Command(BaseCommand):
    help = (
        "Delete finished runs (not pinned) that finished more than DAYS days ago, with their "
        "log chunks, metrics and output folders. The daily schedule does the same with "
        "TUNIXRT_RETENTION_DAYS."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            type=int,
            metavar="DAYS",
            help="Age limit in days (finished_at < now - DAYS). Default: TUNIXRT_RETENTION_DAYS.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would go; change nothing."
        )
        parser.add_argument("--batch-size", type=int, default=500, help="Runs per transaction.")
        parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")

    def handle(self, *args, older_than, dry_run, batch_size, **options):
        days = settings.RETENTION_DAYS if older_than is None else older_than
        if days < 1:
            raise CommandError(
                "Retention is off (TUNIXRT_RETENTION_DAYS=0) and no --older-than was given."
                if older_than is None
                else "--older-than must be at least 1 day."
            )
        bar = ProgressBar(self.stdout) if self.stdout.isatty() else None
        try:
            summary = services.runs_prune(
                older_than_days=days, dry_run=dry_run, batch_size=batch_size, progress=bar
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        finally:
            if bar is not None:
                bar.close()
        if options["json"]:
            self.stdout.write(json.dumps(summary.as_dict()))
        else:
            self.stdout.write(self.style.SUCCESS(str(summary)))
