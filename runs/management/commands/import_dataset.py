from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from runs.datasets import services as dataset_services
from runs.errors import ServiceError


class Command(BaseCommand):
    help = "Validate a JSONL file and register it as dataset NAME-VERSION."

    def add_base_argument(self, parser, *args, **kwargs):
        # Our --version is the dataset's version; Django's own --version would clash.
        if "--version" not in args:
            super().add_base_argument(parser, *args, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--name", required=True)
        parser.add_argument("--version", required=True)
        parser.add_argument("--format", choices=["reasoning", "prompt_completion", "messages"])
        parser.add_argument("--description", default="")
        parser.add_argument("--owner", help="Username recorded as the dataset's owner.")
        parser.add_argument(
            "--if-missing", action="store_true", help="Do nothing when the dataset exists."
        )

    def handle(self, *args, file: Path, name, version, **options):
        from runs.models import Dataset

        key = f"{name}-{version}"
        if options["if_missing"] and Dataset.objects.filter(key=key).exists():
            self.stdout.write(f"Dataset {key} already exists.")
            return
        owner = None
        if options["owner"]:
            owner = get_user_model().objects.filter(username=options["owner"]).first()
            if owner is None:
                raise CommandError(f"No user {options['owner']}.")
        if not file.is_file():
            raise CommandError(f"{file} is not a file.")
        try:
            with open(file, "rb") as handle:
                dataset = dataset_services.dataset_import(
                    source=handle,
                    name=name,
                    version=version,
                    owner=owner,
                    declared_format=options["format"],
                    description=options["description"],
                )
        except ServiceError as exc:
            # One error per line, indented under the field it concerns.
            details = "".join(
                f"\n  {field}:" + "".join(f"\n    {line}" for line in str(text).splitlines())
                for field, text in exc.fields.items()
            )
            raise CommandError(exc.message + details) from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {dataset.key}: {dataset.row_count} rows ({dataset.format}), "
                f"sha256 {dataset.sha256[:12]}"
            )
        )
