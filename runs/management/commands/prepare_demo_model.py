import subprocess
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from runs.storage import is_safe_segment

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "reasoning-sample.jsonl"


class Command(BaseCommand):
    help = (
        "Generate a tiny local base model (random weights, a tokenizer trained on the sample "
        "data) under the models folder, so a real Tunix run can be launched within minutes. "
        "Runs in the training interpreter; does nothing when the model already exists."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", default="tiny-llama3")
        parser.add_argument(
            "--family", default="llama3", choices=["llama3", "gemma2", "gemma3", "qwen2", "qwen3"]
        )
        parser.add_argument("--force", action="store_true")

    def handle(self, *args, name, family, force, **options):
        if not is_safe_segment(name):
            raise CommandError("The name may only use letters, digits, '.', '_' and '-'.")
        target = Path(settings.MODELS_DIR) / name
        if (target / "config.json").exists() and not force:
            self.stdout.write(f"Demo model local:{name} is ready.")
            return
        done = subprocess.run(
            [
                settings.TUNIX_PYTHON,
                "-m",
                "runs.launcher.tinymodel",
                str(target),
                "--data",
                str(SAMPLE),
                "--family",
                family,
            ],
            cwd=settings.BASE_DIR,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise CommandError(f"Could not generate the demo model: {done.stderr[-2000:]}")
        self.stdout.write(self.style.SUCCESS(f"Demo model ready: local:{name} ({target})"))
