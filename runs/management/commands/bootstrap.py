import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from runs import services

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "reasoning-sample.jsonl"


class Command(BaseCommand):
    help = (
        "First-start setup, safe to run again: an admin user (password printed once, the "
        "first time), the sample dataset, and the recurring queue schedules."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username, **options):
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(username, "", password)
            note = settings.DATA_DIR / "admin-password.txt"
            note.write_text(f"{username}\n{password}\n")
            note.chmod(0o600)
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created admin user '{username}' with password: {password}\n"
                    f"(also saved to {note}; change it in the admin)"
                )
            )
        call_command("import_dataset", str(SAMPLE), name="sample", version="v1", if_missing=True)

        services.schedules_ensure()
        self.stdout.write(f"Data folder: {Path(settings.DATA_DIR)}")
