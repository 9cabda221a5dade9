"""Reads of runs shared by the API, the pages and the admin. Datasets have their own in
`runs.datasets.selectors`; files in `runs.storage`."""

from .compare import run_comparison, runs_for_compare
from .logs import (
    run_log_chunks,
    run_log_excerpt,
    run_log_tail,
    run_log_text,
    run_metric_count,
    run_metric_series,
    run_metric_summary,
)
from .runs import (
    Page,
    paginate,
    queue_position,
    run_chain,
    run_filter_options,
    run_for_user,
    run_samples,
    runs_filter,
    runs_related_counts,
    runs_visible_to,
)

__all__ = [
    "run_chain",
    "run_samples",
    "runs_visible_to",
    "run_for_user",
    "runs_filter",
    "Page",
    "paginate",
    "queue_position",
    "run_filter_options",
    "runs_related_counts",
    "run_log_chunks",
    "run_log_text",
    "run_log_tail",
    "run_log_excerpt",
    "run_metric_series",
    "run_metric_count",
    "run_metric_summary",
    "runs_for_compare",
    "run_comparison",
]
