"""Reads of runs shared by the API, the pages and the admin. Datasets have their own in
`runs.datasets.selectors`; files in `runs.storage`."""

from .compare import run_comparison, runs_for_compare
from .evaluations import (
    evaluation_change_counts,
    evaluation_rows,
    evaluation_scores,
    latest_evaluation,
    run_jobs,
)
from .logs import (
    STREAM_TAIL_BYTES,
    run_log_chunks,
    run_log_excerpt,
    run_log_tail,
    run_log_text,
    run_metric_count,
    run_metric_series,
    run_metric_summary,
    run_stream_tail,
)
from .runs import (
    Page,
    paginate,
    queue_position,
    run_children,
    run_filter_options,
    run_for_user,
    runs_filter,
    runs_related_counts,
    runs_visible_to,
)

__all__ = [
    "runs_visible_to",
    "run_for_user",
    "run_children",
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
    "run_stream_tail",
    "STREAM_TAIL_BYTES",
    "runs_for_compare",
    "run_comparison",
    "run_jobs",
    "evaluation_scores",
    "evaluation_rows",
    "evaluation_change_counts",
    "latest_evaluation",
]
