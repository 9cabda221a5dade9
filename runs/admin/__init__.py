"""The Django admin: runs (read-only record, actions), datasets and API tokens."""

from runs.admin import datasets, runs, tokens  # noqa: F401  (each registers its models)
