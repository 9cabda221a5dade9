"""The Django admin: runs (read-only record, actions), worker hosts, datasets and API tokens."""

from runs.admin import datasets, hosts, runs, tokens  # noqa: F401  (each registers its models)
