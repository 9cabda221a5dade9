"""The supervisor: the one module that owns a run's child process.

It spawns the run's argv (no shell) in its own process group with a minimal environment,
drains stdout and stderr continuously into log chunks, turns launcher events into progress
and metrics, writes a heartbeat, and stops the whole group on cancel or timeout. No
database transaction stays open while the child runs: every write commits on its own."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from django.conf import settings
from django.utils import timezone

from . import protocol
from .logwriter import LogWriter
from .metric_buckets import MAX_STEP, metrics_store
from .models import LogChunk, RunStatus, TunixRun
from .outage import DatabaseGate
from .processes import child_environment, die_with_parent, kill_group, signal_group

log = logging.getLogger(__name__)


# The outcome of a run that was finished elsewhere (reaped, cancelled while pending, deleted):
# its supervisor records nothing more.
GONE = "gone"

READ_SIZE = 64 * 1024


PIPE_BYTES = 1024 * 1024  # Linux's default maximum for an unprivileged pipe


# A stdout line longer than this cannot be a launcher event; it is stored as plain text.
MAX_EVENT_LINE = 64 * 1024

# Metrics kept in memory while the database is away (a few MB); more are counted, dropped.
MAX_BUFFERED_METRICS = 100_000
# Metrics stored before the next tick once this many wait (a child that reports faster than
# the tick would otherwise fill the outage buffer with the database up).
METRIC_FLUSH_COUNT = 20_000


def give_up_after() -> float:
    """Seconds without a heartbeat after which the supervisor stops the child: before the
    reaper (TUNIXRT_HEARTBEAT_STALE_SECONDS) would call the run lost."""
    return max(1.0, settings.HEARTBEAT_STALE_SECONDS - settings.HEARTBEAT_SECONDS)


def final_patience() -> float:
    """How long a supervisor whose child has ended waits for the database to record it."""
    return 2 * settings.HEARTBEAT_STALE_SECONDS + 30


def reaper_patience() -> float:
    """How long the reaper leaves a stale run alone while its supervisor process lives."""
    return give_up_after() + final_patience() + 30


@dataclass
class Outcome:
    status: str
    exit_code: int | None
    message: str


class Supervisor:
    def __init__(self, run: TunixRun, *, cwd: Path, env_extra: dict[str, str] | None = None):
        self.run = run
        self.cwd = cwd
        self.env_extra = env_extra or {}
        last = LogChunk.objects.filter(run_id=run.id).order_by("-seq").first()
        self.log = LogWriter(run.id, settings.LOG_CAP_BYTES, seq=last.seq if last else 0)
        self.pending: dict[str, list[str]] = {"stdout": [], "stderr": [], "system": []}
        self.pending_bytes = 0
        self.partial = {"stdout": b"", "stderr": b""}
        self.metrics: list[tuple[str, int, float]] = []
        self.progress: dict[str, object] = {}
        self.environment: dict[str, object] = {}
        self.last_error: str | None = None
        self.bytes_read = 0
        # Database outages (see runs/outage.py): what could not be kept in memory.
        self.gate = DatabaseGate()
        self.last_beat_ok = time.monotonic()
        self.outage_dropped_bytes = 0
        self.outage_dropped_metrics = 0

    # The loop ------------------------------------------------------------------------
    def execute(self) -> Outcome:
        proc = self._spawn()
        try:
            self._store()  # the pid and group first: the reaper needs them
            sel = self._watch(proc)
            stop = self._supervise(proc, sel)
            sel.close()
            for pipe in (proc.stdout, proc.stderr):
                pipe.close()
            code = proc.wait()
            log.info("run %s: the training process exited with code %s", self.run.id, code)
        except BaseException:
            # Whatever went wrong here, the child must not go on running unwatched.
            kill_group(self.pgid, self.started, grace=0)
            raise
        for name in ("stdout", "stderr"):
            if self.partial[name]:
                self._line(name, self.partial[name])
                self.partial[name] = b""
        self._say_what_was_lost()
        self._store_at_the_end()
        return self._outcome(code, stop)

    def _store_at_the_end(self) -> None:
        """The last store. The database may still be away: wait for it (bounded) so the log
        is complete. Through _store, like every other store, so an outage that ends only
        now is said in the log too."""
        deadline = self.gate.clock() + final_patience()
        while not (self._store() and not any(self.pending.values())):
            if self.gate.clock() >= deadline:
                return
            time.sleep(max(0.0, min(self.gate.next_try, deadline) - self.gate.clock()))

    def _say_what_was_lost(self) -> None:
        if self.log.dropped:
            # The marker above was updated in place; followers reading after a cursor
            # only see new chunks, so the final figure is also said at the end.
            self._system(f"[tunix-rt] {self.log.dropped} bytes of output were not stored.\n")
        if self.outage_dropped_bytes or self.outage_dropped_metrics:
            self._system(
                f"[tunix-rt] while the database was unreachable, {self.outage_dropped_bytes} "
                f"bytes of output and {self.outage_dropped_metrics} metrics did not fit in "
                "the buffer and were dropped.\n"
            )

    def _spawn(self) -> subprocess.Popen:
        """Start the child in its own process group and record its pid and group."""
        proc = subprocess.Popen(
            self.run.command,
            cwd=self.cwd,
            env=child_environment(self.env_extra),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
            close_fds=True,
        )
        self.pgid = proc.pid
        self.started = psutil.Process(proc.pid).create_time()
        me = psutil.Process()
        # Buffered like any other write: a database outage right now must not orphan it.
        self.progress.update(pid=proc.pid, pgid=self.pgid)
        self.environment.update(
            pid_create_time=self.started,
            supervisor_pid=me.pid,
            supervisor_create_time=me.create_time(),
        )
        return proc

    def _watch(self, proc: subprocess.Popen) -> selectors.DefaultSelector:
        sel = selectors.DefaultSelector()
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            os.set_blocking(pipe.fileno(), False)
            # A larger pipe lets the child keep writing while we store a chunk.
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            sel.register(pipe, selectors.EVENT_READ, name)
        return sel

    def _read(self, sel: selectors.DefaultSelector) -> tuple[int, bool]:
        """Read what is ready: (pipes that closed, whether a read was small)."""
        closed, small = 0, False
        for key, _ in sel.select(timeout=0.2):
            try:
                data = os.read(key.fileobj.fileno(), READ_SIZE)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
                continue
            self.bytes_read += len(data)
            small = small or len(data) < READ_SIZE // 4
            self._take(key.data, data)
        return closed, small

    def _supervise(self, proc, sel) -> tuple[str, str] | None:
        """Drain the pipes until both close; flush, beat, enforce cancel and timeout.
        Returns the (final status, message) decided by us, or None."""
        # Read once: settings are a lazy object, and this loop turns many times a second.
        flush_every, beat_every = settings.LOG_FLUSH_SECONDS, settings.HEARTBEAT_SECONDS
        begin = time.monotonic()
        self.last_flush = self.last_beat = last_poll = begin
        self.stop: tuple[str, str] | None = None
        self.kill_at: float | None = None  # when SIGKILL follows the SIGTERM already sent
        open_pipes, exited_at = 2, None
        while open_pipes:
            closed, small = self._read(sel)
            open_pipes -= closed
            now = time.monotonic()
            if small:
                # A chatty child writes line by line: let a few milliseconds of output
                # gather in the (large) pipe instead of waking for every line.
                time.sleep(0.005)
            if now - last_poll < 0.1 and open_pipes == 2 and self.stop is None:
                continue
            last_poll = now
            self._tick(now, begin, flush_every, beat_every, exited_at is None)
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                # The child is gone; nothing of its group may outlive the run.
                kill_group(self.pgid, self.started, grace=0)
            if exited_at is not None and now - exited_at > 5:
                break  # a process outside the group still holds a pipe; stop reading it
        return self.stop

    def _tick(self, now, begin, flush_every, beat_every, child_alive: bool) -> None:
        """The periodic work: store output, check for cancel, beat, stop on timeout. While
        the database is away, output is buffered and it is tried again with backoff."""
        if self.gate.due() and (self.gate.down or now - self.last_flush >= flush_every):
            self.last_flush = now
            if self._store() and self.stop is None:
                ok, stop = self.gate.call(self._check_cancel)
                self.stop = stop if ok else None
        if self.stop is None and not self.gate.down and now - self.last_beat >= beat_every:
            self.last_beat = now
            ok, mine = self.gate.call(self._heartbeat)
            if ok:
                self.last_beat_ok = now
                if not mine:
                    self.stop = (GONE, "The run was finished elsewhere.")
        if self.stop is None and self.gate.down and now - self.last_beat_ok > give_up_after():
            # Past this, the reaper would declare the run lost: stop the child first, so no
            # process outlives this decision, and record why once the database is back.
            self.stop = (
                RunStatus.FAILED,
                f"The database was unreachable for {self.gate.down_for():.0f} s, longer than "
                f"the heartbeat window (TUNIXRT_HEARTBEAT_STALE_SECONDS="
                f"{settings.HEARTBEAT_STALE_SECONDS}); the training process group was stopped. "
                f"Last error: {self.gate.last_error}",
            )
        if self.stop is None and now - begin > self.run.timeout_seconds:
            self.stop = (RunStatus.TIMEOUT, f"Timed out after {self.run.timeout_seconds} s.")
        if self.stop is not None and self.kill_at is None and child_alive:
            # SIGTERM now, SIGKILL after the grace period; the pipes keep draining
            # meanwhile so a child that logs while shutting down never blocks.
            self._system(f"[tunix-rt] stopping the process group: {self.stop[1]}\n")
            signal_group(self.pgid, self.started, signal.SIGTERM)
            self.kill_at = now + settings.CANCEL_GRACE_SECONDS
        if self.kill_at is not None and now >= self.kill_at:
            signal_group(self.pgid, self.started, signal.SIGKILL)
            self.kill_at = now + 1

    def _outcome(self, code: int, stop: tuple[str, str] | None) -> Outcome:
        if stop is not None:
            return Outcome(stop[0], code, stop[1])
        if code == 0:
            return Outcome(RunStatus.COMPLETED, 0, "Finished successfully.")
        if code < 0:
            name = signal.Signals(-code).name
            reason = self.last_error or f"The process was killed by {name}."
            return Outcome(RunStatus.FAILED, code, reason)
        return Outcome(
            RunStatus.FAILED, code, self.last_error or f"The process exited with code {code}."
        )

    # Output handling -------------------------------------------------------------------
    def _take(self, stream: str, data: bytes) -> None:
        buffer = self.partial[stream] + data
        cut = buffer.rfind(b"\n") + 1
        complete, self.partial[stream] = buffer[:cut], buffer[cut:]
        if complete:
            # Only stdout lines that start with "{" can be events; everything else goes to
            # the log as one block, so heavy output costs one append, not one per line.
            if stream == "stdout" and (complete.startswith(b"{") or b"\n{" in complete):
                for line in complete.splitlines(keepends=True):
                    self._line(stream, line)
            else:
                self._text(stream, complete)
        # No newline for a long time: store what we have so memory stays bounded.
        if len(self.partial[stream]) > MAX_EVENT_LINE:
            self._text(stream, self.partial[stream])
            self.partial[stream] = b""

    def _line(self, stream: str, line: bytes) -> None:
        if stream == "stdout" and len(line) <= MAX_EVENT_LINE:
            event = protocol.parse_event(line.decode("utf-8", "replace"))
            if event is not None:
                self._event(event)
                return
        self._text(stream, line)

    def _text(self, stream: str, data: bytes) -> None:
        if self.gate.down and self.pending_bytes + len(data) > settings.OUTAGE_BUFFER_BYTES:
            self.outage_dropped_bytes += len(data)  # said in the log once it is back
            return
        text = data.decode("utf-8", "replace")
        self.pending[stream].append(text)
        self.pending_bytes += len(data)
        if self.pending_bytes >= settings.LOG_FLUSH_BYTES and not self.gate.down:
            self.gate.call(self._flush_log)

    def _system(self, text: str) -> None:
        """A line of ours, stored after the output read so far (buffered like it)."""
        self.pending["system"].append(text)
        if self.gate.due():
            self._store()

    def _store(self) -> bool:
        """Flush through the gate. After an outage, say so in the log and beat at once: the
        run is re-asserted as ours before the reaper could think it lost."""
        was_down = self.gate.down_for()
        ok, _ = self.gate.call(self._flush)
        if ok and was_down:
            self.last_beat = float("-inf")
            self.pending["system"].append(
                f"[tunix-rt] the database was unreachable for {was_down:.1f} s; the output "
                "of that time was buffered and is stored above.\n"
            )
            self.gate.call(self._flush_log)
        return ok

    def _event(self, event: dict) -> None:
        kind = event["event"]
        now = timezone.now()
        if kind == "phase" and isinstance(event.get("phase"), str):
            self.progress["phase"] = event["phase"][:32]
        elif kind == "progress":
            step, total = event.get("step"), event.get("total_steps")
            if isinstance(step, int) and step >= 0:
                self.progress["progress_step"] = step
                self.progress["progress_updated_at"] = now
            if isinstance(total, int) and total > 0:
                self.progress["progress_total"] = total
        elif kind == "metric":
            name, step, value = event.get("name"), event.get("step"), event.get("value")
            if (
                isinstance(name, str)
                and isinstance(step, int)
                and 0 <= step <= MAX_STEP
                and isinstance(value, int | float)
                and math.isfinite(value)
            ):
                if len(self.metrics) >= MAX_BUFFERED_METRICS:
                    self.outage_dropped_metrics += 1
                else:
                    self.metrics.append((name[:100], step, float(value)))
                    if len(self.metrics) >= METRIC_FLUSH_COUNT and not self.gate.down:
                        self.gate.call(self._flush_metrics)
        elif kind == "environment":
            self.environment.update(
                {k: v for k, v in event.items() if k != "event" and isinstance(v, str | int)}
            )
        elif kind == "error" and isinstance(event.get("message"), str):
            self.last_error = event["message"][:2000]
            self._text("stderr", f"[launcher] error: {self.last_error}\n".encode())
        elif kind in protocol.HISTORY_EVENTS:
            self.environment.setdefault("events", [])
            if len(self.environment["events"]) < 200:
                self.environment["events"].append(event)

    def _flush_log(self) -> None:
        """Store pending output (at least every 64 KiB; the 1 s tick calls _flush). A
        stream's text is dropped from memory only once it is stored."""
        for stream in ("stdout", "stderr", "system"):
            if self.pending[stream]:
                text = "".join(self.pending[stream])
                self.log.write(stream, text)
                self.pending[stream] = []
                self.pending_bytes = max(0, self.pending_bytes - len(text))
        if not any(self.pending.values()):
            self.pending_bytes = 0

    def _flush_metrics(self) -> None:
        if self.metrics:
            # With their chart buckets, in one transaction: a retry stores nothing twice.
            metrics_store(self.run.id, self.metrics)
            self.metrics = []

    def _flush(self) -> None:
        """Store pending output, metrics and progress, and the run's log counters. Safe to
        call again after a database error: what was stored is not stored twice."""
        self._flush_log()
        self._flush_metrics()
        updates: dict[str, object] = dict(self.progress)
        if self.environment:
            env = dict(
                TunixRun.objects.filter(id=self.run.id).values_list("environment", flat=True)[0]
            )
            events = env.get("events", []) + self.environment.get("events", [])
            env.update({k: v for k, v in self.environment.items() if k != "events"})
            if events:
                env["events"] = events[-200:]
            updates["environment"] = env
        updates["log_bytes"] = self.log.stored + self.log.tail_bytes
        updates["log_dropped_bytes"] = self.log.dropped
        TunixRun.objects.filter(id=self.run.id).update(**updates)
        self.progress, self.environment = {}, {}

    # Control ---------------------------------------------------------------------------
    def _heartbeat(self) -> bool:
        """False when the run is no longer ours to run (the reaper or a cancel finished it)."""
        return bool(
            TunixRun.objects.filter(id=self.run.id, status=RunStatus.RUNNING).update(
                heartbeat_at=timezone.now()
            )
        )

    def _check_cancel(self) -> tuple[str, str] | None:
        row = TunixRun.objects.filter(id=self.run.id).values("status", "cancel_requested_at")
        row = row.first()
        if row is None:
            return (GONE, "The run was deleted.")
        if row["cancel_requested_at"] is not None:
            return (RunStatus.CANCELLED, "Cancelled by request.")
        if row["status"] != RunStatus.RUNNING:
            return (GONE, "The run was finished elsewhere.")
        return None
