from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from runs import services


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it once (only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label, e.g. the script using it.")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username}.")
        _, token = services.api_token_create(user=user, name=name)
        self.stdout.write(token)
