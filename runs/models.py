# long: one record per run (TunixRun) with every setting of the one hyperparameter table as a
# column, plus its companions; splitting the models across modules would hide the schema.
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .launcher.rewards import EXTRACTIONS, MATCH_MODES
from .protocol import COMPUTE_DTYPES, GRPO_LOSSES, GRPO_VARIANTS, LONG_COMPLETIONS, LR_SCHEDULES


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(value, value) for value in values]


class Dataset(models.Model):
    """A registered JSONL training file. `key` is `name-version`; a version never changes."""

    class Format(models.TextChoices):
        REASONING = "reasoning", "Reasoning traces"
        PROMPT_COMPLETION = "prompt_completion", "Prompt / completion"
        MESSAGES = "messages", "Chat messages"
        PREFERENCE = "preference", "Preference pairs"
        PROMPT_ANSWER = "prompt_answer", "Prompt / answer"

    key = models.CharField(max_length=160, unique=True)
    name = models.CharField(max_length=100)
    version = models.CharField(max_length=50)
    format = models.CharField(max_length=32, choices=Format.choices)
    # Relative to settings.DATASETS_DIR; always written by us, never taken from a request.
    file_path = models.CharField(max_length=300)
    row_count = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Private to its owner (and staff) unless the owner shares it. A dataset without an
    # owner was imported by the operator (manage.py import_dataset) and is everyone's.
    shared = models.BooleanField(default=False, help_text="Visible to every user.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="dataset_name_version")
        ]

    def __str__(self) -> str:
        return self.key


class RunStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    TIMEOUT = "timeout", "Timed out"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (RunStatus.PENDING, RunStatus.RUNNING)
FINAL_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED)


class RunMethod(models.TextChoices):
    # The same values as runs.hyperparameters.METHODS (a test keeps them equal).
    SFT = "sft", "SFT"
    DPO = "dpo", "DPO"
    ORPO = "orpo", "ORPO"
    GRPO = "grpo", "GRPO"


class RunMode(models.TextChoices):
    DRY_RUN = "dry-run", "Dry-run"
    LOCAL = "local", "Local"


class RunKind(models.TextChoices):
    """What a run does. Evaluations and exports of a trained run are runs too: the same queue,
    supervisor, logs, cancel and reaper carry them (runs/services/jobs.py)."""

    TRAIN = "train", "Training"
    EVALUATE = "evaluate", "Evaluation"
    EXPORT = "export", "Export"


class TunixRun(models.Model):
    """The record of one run: what was asked, what was executed, and how it ended."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="tunix_runs"
    )
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.PENDING)
    mode = models.CharField(max_length=16, choices=RunMode.choices)
    name = models.CharField(max_length=200, blank=True)

    # Input. The dataset row may be deleted later; the key and hash keep the record whole.
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.SET_NULL)
    dataset_key = models.CharField(max_length=160)
    dataset_sha256 = models.CharField(max_length=64, blank=True)
    model_id = models.CharField(max_length=200)
    model_family = models.CharField(max_length=32, blank=True)
    output_dir = models.CharField(max_length=255, help_text="Relative to the artifacts root.")

    # Hyperparameters (bounds live in runs/tunix.py next to the config they feed).
    learning_rate = models.FloatField()
    num_epochs = models.PositiveIntegerField()
    batch_size = models.PositiveIntegerField()
    max_seq_length = models.PositiveIntegerField()
    max_steps = models.PositiveIntegerField(null=True, blank=True)
    lora_rank = models.PositiveIntegerField()
    lora_alpha = models.FloatField()
    seed = models.PositiveIntegerField()
    eval_every_n_steps = models.PositiveIntegerField()
    # Added later: defaults are what runs before them did (constant rate, no warmup, a
    # checkpoint at every evaluation); max_grad_norm 0 is "no clipping", as then.
    lr_schedule = models.CharField(
        max_length=16, choices=_choices(LR_SCHEDULES), default="constant"
    )
    warmup_steps = models.PositiveIntegerField(default=0)
    max_grad_norm = models.FloatField(default=0.0)
    long_completions = models.CharField(
        max_length=8, choices=_choices(LONG_COMPLETIONS), default="drop"
    )
    compute_dtype = models.CharField(max_length=8, choices=_choices(COMPUTE_DTYPES), default="fp32")
    checkpoint_every_n_steps = models.PositiveIntegerField(default=50)
    checkpoints_to_keep = models.PositiveIntegerField(default=3)
    # The method and its settings; which method uses which is in runs/hyperparameters.py.
    # Every run stores them all (defaults where the method does not use them).
    method = models.CharField(max_length=8, choices=RunMethod.choices, default=RunMethod.SFT)
    dpo_beta = models.FloatField(default=0.1)
    orpo_lambda = models.FloatField(default=0.1)
    grpo_variant = models.CharField(max_length=16, choices=_choices(GRPO_VARIANTS), default="grpo")
    grpo_loss = models.CharField(max_length=16, choices=_choices(GRPO_LOSSES), default="grpo")
    num_generations = models.PositiveIntegerField(default=2)
    num_iterations = models.PositiveIntegerField(default=1)
    kl_beta = models.FloatField(default=0.04)
    clip_epsilon = models.FloatField(default=0.2)
    max_new_tokens = models.PositiveIntegerField(default=64)
    temperature = models.FloatField(default=0.9)
    top_p = models.FloatField(default=1.0)
    reward_answer_match = models.FloatField(default=1.0)
    reward_answer_format = models.FloatField(default=0.0)
    reward_length_penalty = models.FloatField(default=0.0)
    reward_reasoning_format = models.FloatField(default=0.0)
    answer_extraction = models.CharField(
        max_length=16, choices=_choices(EXTRACTIONS), default="marker"
    )
    answer_marker = models.CharField(max_length=64, default="Final answer:")
    answer_tag = models.CharField(max_length=32, default="answer")
    answer_match_mode = models.CharField(
        max_length=16, choices=_choices(MATCH_MODES), default="numeric"
    )
    answer_tolerance = models.FloatField(default=1e-6)
    length_target = models.PositiveIntegerField(default=400)
    extra_rewards = models.CharField(max_length=300, blank=True, default="")
    # Start from another run's result: its LoRA is merged into its base before training.
    base_run = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="derived_runs"
    )
    # The device mesh: data/FSDP times tensor parallelism devices; fsdp 0 is "all the slot's
    # devices" (divided by tp). Defaults: FSDP over every device, as before.
    mesh_fsdp = models.PositiveIntegerField(default=0)
    mesh_tp = models.PositiveIntegerField(default=1)
    timeout_seconds = models.PositiveIntegerField()

    # What executes: the resolved config and the exact argv. Stored, never re-derived.
    config = models.JSONField(default=dict, blank=True)
    command = models.JSONField(default=list, blank=True)
    environment = models.JSONField(
        default=dict, blank=True, help_text="Versions of Tunix/JAX, device kind, host."
    )

    # Outcome.
    exit_code = models.IntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Execution bookkeeping, written by the supervisor on the worker host.
    phase = models.CharField(max_length=32, blank=True)
    progress_step = models.PositiveIntegerField(null=True, blank=True)
    progress_total = models.PositiveIntegerField(null=True, blank=True)
    progress_updated_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True)
    # The slot of worker_host the run holds while it runs, and that slot's devices
    # ("" when the slot shares every device of the host).
    worker_slot = models.PositiveSmallIntegerField(null=True, blank=True)
    devices = models.CharField(max_length=255, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    pgid = models.IntegerField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    log_bytes = models.PositiveBigIntegerField(default=0)
    log_dropped_bytes = models.PositiveBigIntegerField(default=0)

    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    resume_from_step = models.PositiveIntegerField(null=True, blank=True)
    pinned = models.BooleanField(default=False)

    kind = models.CharField(max_length=16, choices=RunKind.choices, default=RunKind.TRAIN)
    # The trained run an evaluation or export works on; deleting it deletes its jobs
    # (runs/services/deletion.py removes their folders first).
    source = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The run list, newest first, paged by a cursor: ORDER BY created_at DESC, id DESC
            # with WHERE created_at <= ? (the page's start) and the filters. Each filter the
            # list offers has an index that leads with it and ends in the sort, alone (staff)
            # and after the owner (a user's runs), so a page reads its rows in order and stops,
            # and the capped count (LIMIT 1001) is an index-only scan. bench/explain_runs.py
            # shows the plans on 100,000 runs.
            models.Index(fields=["-created_at", "-id"], name="run_newest"),
            models.Index(fields=["owner", "-created_at", "-id"], name="run_owner_newest"),
            models.Index(fields=["status", "-created_at", "-id"], name="run_status_newest"),
            models.Index(fields=["mode", "-created_at", "-id"], name="run_mode_newest"),
            models.Index(fields=["dataset_key", "-created_at", "-id"], name="run_dataset_newest"),
            models.Index(fields=["model_id", "-created_at", "-id"], name="run_model_newest"),
            models.Index(
                fields=["owner", "status", "-created_at", "-id"], name="run_owner_status_newest"
            ),
            models.Index(
                fields=["owner", "mode", "-created_at", "-id"], name="run_owner_mode_newest"
            ),
            models.Index(
                fields=["owner", "dataset_key", "-created_at", "-id"],
                name="run_owner_dataset_newest",
            ),
            models.Index(
                fields=["owner", "model_id", "-created_at", "-id"], name="run_owner_model_newest"
            ),
            # Reaper: WHERE status = 'running' AND heartbeat_at < ?.
            models.Index(
                fields=["heartbeat_at"],
                name="run_running_heartbeat",
                condition=Q(status="running"),
            ),
            # The claim: WHERE status = 'pending' AND mode = 'local' ORDER BY created_at, id
            # LIMIT 1 FOR UPDATE SKIP LOCKED; also the idle hosts' "anything to do?" poll.
            models.Index(
                fields=["created_at", "id"],
                name="run_pending_oldest",
                condition=Q(status="pending"),
            ),
            # The reaper's requeue of pending runs whose wake-up was lost: UPDATE ... WHERE
            # status = 'pending' AND mode = 'local' AND enqueued_at < ?.
            models.Index(
                fields=["enqueued_at"],
                name="run_pending_enqueued",
                condition=Q(status="pending"),
            ),
            # Retention: finished runs by age.
            models.Index(fields=["finished_at"], name="run_finished"),
            # A run's evaluations and exports: WHERE source_id = ? AND kind = ? ORDER BY
            # created_at DESC.
            models.Index(fields=["source", "kind", "-created_at"], name="run_source_kind"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=[s.value for s in RunStatus]), name="run_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(mode__in=[m.value for m in RunMode]), name="run_mode_valid"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=[k.value for k in RunKind]), name="run_kind_valid"
            ),
            # A slot holds one run: two runs never share a slot's devices. Also the index for
            # a host's busy slots: WHERE status = 'running' AND worker_host = ?.
            models.UniqueConstraint(
                fields=["worker_host", "worker_slot"],
                condition=Q(status="running"),
                name="run_one_per_slot",
            ),
            # Two runs never write into one folder.
            models.UniqueConstraint(fields=["output_dir"], name="run_output_dir_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} on {self.dataset_key} ({self.status})"

    @property
    def devices_needed(self) -> int:
        """Devices the run's mesh names exactly; 0: whatever its slot has."""
        return self.mesh_fsdp * self.mesh_tp if self.mesh_fsdp else 0

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    @property
    def progress_fraction(self) -> float | None:
        if self.progress_step is not None and self.progress_total:
            return min(1.0, self.progress_step / self.progress_total)
        return None

    @property
    def eta_seconds(self) -> float | None:
        """Linear estimate from the steps done since the run started."""
        if (
            self.status != RunStatus.RUNNING
            or not self.progress_step
            or not self.progress_total
            or not self.progress_updated_at
            or not self.started_at
        ):
            return None
        start_step = self.resume_from_step or 0
        done = self.progress_step - start_step
        if done <= 0:
            return None
        elapsed = (self.progress_updated_at - self.started_at).total_seconds()
        return max(0.0, elapsed / done * (self.progress_total - self.progress_step))


class EvaluationRow(models.Model):
    """One evaluated row of an evaluation run: the prompt, the reference, both models' outputs
    and their scores (metric name -> value in [0, 1]; `*_score` is the headline metric)."""

    class Change(models.TextChoices):
        BETTER = "better", "Got better"
        WORSE = "worse", "Got worse"
        STILL_WRONG = "still_wrong", "Still wrong"
        STILL_RIGHT = "still_right", "Still right"

    id = models.BigAutoField(primary_key=True)
    evaluation = models.ForeignKey(
        TunixRun, on_delete=models.CASCADE, related_name="evaluation_rows"
    )
    index = models.PositiveIntegerField()
    prompt = models.TextField()
    reference = models.TextField()
    base_output = models.TextField()
    tuned_output = models.TextField()
    base_scores = models.JSONField(default=dict)
    tuned_scores = models.JSONField(default=dict)
    base_score = models.FloatField()
    tuned_score = models.FloatField()
    change = models.CharField(max_length=16, choices=Change.choices)

    class Meta:
        ordering = ["evaluation", "index"]
        constraints = [
            # Also the index for "rows of evaluation E", the table query.
            models.UniqueConstraint(fields=["evaluation", "index"], name="evalrow_eval_index")
        ]
        indexes = [
            # The table's filter: WHERE evaluation_id = ? AND change = ? ORDER BY index.
            models.Index(fields=["evaluation", "change", "index"], name="evalrow_eval_change"),
        ]

    def __str__(self) -> str:
        return f"{self.evaluation_id} #{self.index} ({self.change})"


class PlaygroundPrompt(models.Model):
    """One prompt of a run's playground: who asked, with which settings, when; the rendered
    prompt the models saw and the answers of the fine-tuned and the base model. Deleted with
    the run."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting"
        DONE = "done", "Answered"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(TunixRun, on_delete=models.CASCADE, related_name="prompts")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    prompt = models.TextField()
    rendered_prompt = models.TextField()
    generation = models.JSONField(default=dict)  # decoding settings
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    tuned_output = models.TextField(blank=True, default="")
    base_output = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    # The first prompt to a run on a host loads both models and compiles: "cold".
    cold = models.BooleanField(default=False)
    seconds = models.FloatField(null=True, blank=True)
    worker_host = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["run", "-created_at"], name="prompt_run_created")]

    def __str__(self) -> str:
        return f"{self.run_id} prompt {self.id} ({self.status})"


class LogChunk(models.Model):
    """One piece of a run's output, in the order it arrived. Chunks are append-only."""

    class Stream(models.TextChoices):
        STDOUT = "stdout", "stdout"
        STDERR = "stderr", "stderr"
        SYSTEM = "system", "system"

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(TunixRun, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    stream = models.CharField(max_length=8, choices=Stream.choices)
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [
            # Also the index for "chunks of run R after SEQ", the log-follow query.
            models.UniqueConstraint(fields=["run", "seq"], name="logchunk_run_seq")
        ]

    def __str__(self) -> str:
        return f"{self.run_id} #{self.seq} ({self.stream})"


class Metric(models.Model):
    """One scalar the trainer reported: name (train/loss, eval/loss, ...) at a step."""

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(TunixRun, on_delete=models.CASCADE, related_name="metrics")
    name = models.CharField(max_length=100)
    step = models.PositiveIntegerField()
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "name", "step"]
        constraints = [
            # Also the index for "series of run R", the chart query.
            models.UniqueConstraint(fields=["run", "name", "step"], name="metric_run_name_step")
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.step}={self.value:g}"


class MetricBucket(models.Model):
    """The first, last, lowest and highest point of one bucket of steps of a metric series,
    kept up to date as metrics are stored (runs/metric_buckets.py), so that a chart of a long
    run reads a few hundred of these instead of grouping every Metric row. Bucket `bucket`
    of level `level` holds the steps [bucket * 2**level, (bucket + 1) * 2**level); the top
    level's bucket 0 holds the whole series. Ties go to the earlier step."""

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(TunixRun, on_delete=models.CASCADE, related_name="metric_buckets")
    level = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=100)
    bucket = models.PositiveIntegerField()
    first_step = models.PositiveIntegerField()
    first_value = models.FloatField()
    last_step = models.PositiveIntegerField()
    last_value = models.FloatField()
    low_step = models.PositiveIntegerField()
    low_value = models.FloatField()
    high_step = models.PositiveIntegerField()
    high_value = models.FloatField()

    class Meta:
        constraints = [
            # The upsert's conflict target, and the index of both reads: "the top bucket of
            # every series of run R" (run, level) and "the buckets of series N of run R at
            # level L, by bucket" (run, level, name, bucket).
            models.UniqueConstraint(
                fields=["run", "level", "name", "bucket"], name="metricbucket_run_level_name"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.level}:{self.bucket}"


class ApiToken(models.Model):
    """A bearer token for scripts. Only a SHA-256 of the token is stored."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="First characters, to tell tokens apart.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"
        verbose_name_plural = "API tokens"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class FolderDeletion(models.Model):
    """Run folders still to be removed from disk after their runs' rows were deleted.

    Rows and files cannot share a transaction. One record is written in each transaction
    that deletes runs (one per retention batch, so 500 runs cost one row, not 500) and
    removed once its folders are gone, so a crash between the two leaves a record that a
    later retention pass finishes (see runs/retention.py).
    """

    id = models.BigAutoField(primary_key=True)
    # Relative to settings.ARTIFACTS_DIR, as the runs' output_dir were.
    paths = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set by the pass that removes the folders; a claim older than the lease (that pass
    # died, or a folder would not go) lets a later pass take the record over.
    claimed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # Leftovers: WHERE claimed_at IS NULL OR claimed_at < ?.
            models.Index(fields=["claimed_at"], name="folderdeletion_claimed"),
        ]

    def __str__(self) -> str:
        return f"{len(self.paths)} folders, from {self.created_at:%Y-%m-%d %H:%M}"


class WorkerHost(models.Model):
    """A worker host, as it registered itself: its slots and accelerators, and when it was
    last seen. The web side offers runs to live hosts and checks a run's device needs
    against them."""

    name = models.CharField(max_length=255, unique=True)
    # The django-q queue that wakes this host (Q_CLUSTER["cluster_name"] on it).
    queue = models.CharField(max_length=100)
    # One list of device ids per slot; an empty list shares every device of the host.
    slots = models.JSONField(default=list)
    # From the probe: {"platform", "kind", "count", "memory_bytes"} or {"error"}.
    accelerators = models.JSONField(default=dict, blank=True)
    probed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField()

    class Meta:
        ordering = ["name"]
        indexes = [
            # Live hosts: WHERE heartbeat_at >= ?.
            models.Index(fields=["heartbeat_at"], name="workerhost_heartbeat"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def slot_sizes(self) -> list[int]:
        """Devices per slot; 0 for a slot that shares every device."""
        return [len(devices) for devices in self.slots]
