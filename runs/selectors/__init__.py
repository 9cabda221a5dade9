"""Reads of runs shared by the API, the pages and the admin. Datasets have their own in
`runs.datasets.selectors`; files in `runs.storage`."""

from .answers import run_answer, run_answer_forget
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
    run_metric_summary,
    run_stream_tail,
)
from .metrics import (
    SERIES_POINTS,
    run_metric_names,
    run_metric_series,
    run_metric_version,
)
from .runs import (
    COUNT_CAP,
    Page,
    RunPage,
    count_capped,
    database_reachable,
    paginate,
    queue_position,
    run_children,
    run_filter_options,
    run_for_user,
    runs_filter,
    runs_for_list,
    runs_page,
    runs_related_counts,
    runs_visible_to,
)

__all__ = [
    "run_answer",
    "run_answer_forget",
    "runs_visible_to",
    "run_for_user",
    "run_children",
    "runs_filter",
    "Page",
    "paginate",
    "COUNT_CAP",
    "database_reachable",
    "RunPage",
    "count_capped",
    "runs_for_list",
    "runs_page",
    "queue_position",
    "run_filter_options",
    "runs_related_counts",
    "run_log_chunks",
    "run_log_text",
    "run_log_tail",
    "run_log_excerpt",
    "run_metric_series",
    "run_metric_version",
    "run_metric_names",
    "SERIES_POINTS",
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
