"""The JSON-lines event writer and the launcher's own exceptions."""

import os
import sys

from runs import protocol


class LaunchError(Exception):
    """A failure with a one-line message for the user and a specific exit code."""

    def __init__(self, message: str, code: int = protocol.EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


class NonFiniteLoss(Exception):
    pass


class Events:
    """Writes the JSON-lines protocol to the real stdout."""

    def __init__(self, stream):
        self._stream = stream
        self.phase = None

    def emit(self, event: str, **fields) -> None:
        self._stream.write(protocol.event_line(event, **fields))
        self._stream.flush()

    def enter(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.emit(protocol.EVENT_PHASE, phase=phase)


def take_over_stdout():
    """Keep the real stdout for events and send fd 1 to stderr.

    Libraries print to stdout now and then (Tunix's Gemma loader does); the
    supervisor must only ever see JSON lines there.
    """
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."
