"""Entry point: python -m runs.launcher CONFIG.json

The exit code: 0 ok, 2 bad config or input, 3 non-finite loss, 4 out of memory, 1 anything
else (see runs.protocol). A failure always ends stdout with one {"event": "error", ...} line.
"""

import os
import sys
import time
import traceback

from runs import protocol
from runs.launcher.config import load_config
from runs.launcher.events import Events, LaunchError, NonFiniteLoss, one_line, take_over_stdout
from runs.launcher.methods import method_module


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "OOM" in text.split()


def _log_to_stderr() -> None:
    """Show Tunix's own INFO lines (losses, restores, timings) on stderr.

    Outside absl.app nothing configures logging, so only warnings would appear.
    Orbax logs through the same "absl" logger at INFO, about forty lines per
    checkpoint; only its warnings are kept.
    """
    import contextlib
    import logging

    with contextlib.suppress(ImportError):
        # Imported first so that the "absl" logger is absl's own class, which
        # records the real caller's file rather than absl's.
        import absl.logging  # noqa: F401

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}tunix{os.sep}" in record.pathname

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s"))
    handler.addFilter(keep)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("absl").setLevel(logging.INFO)


def main(argv: list[str]) -> int:
    started = time.monotonic()
    events = Events(take_over_stdout())
    _log_to_stderr()
    events.enter(protocol.PHASE_STARTING)
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        events.emit(protocol.EVENT_ERROR, message="usage: python -m runs.launcher CONFIG.json")
        return protocol.EXIT_BAD_INPUT
    try:
        config = load_config(argv[0])
        events.enter(protocol.PHASE_LOADING)
        method = method_module(config["method"]["name"])
        prep = method.prepare(config)
        summary = method.train(config, prep, events, started)
    except LaunchError as exc:
        return _fail(events, str(exc), exc.code)
    except NonFiniteLoss as exc:
        return _fail(events, str(exc), protocol.EXIT_NON_FINITE_LOSS)
    except BaseException as exc:  # noqa: BLE001 - the protocol needs an error line for anything
        # NonFiniteLoss raised in the listener may arrive wrapped by JAX or Tunix.
        cause = exc
        while cause is not None and not isinstance(cause, NonFiniteLoss):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            return _fail(events, str(cause), protocol.EXIT_NON_FINITE_LOSS)
        traceback.print_exc(file=sys.stderr)
        if _is_out_of_memory(exc):
            return _fail(
                events,
                f"out of memory while {events.phase}: {one_line(exc)}",
                protocol.EXIT_OUT_OF_MEMORY,
            )
        if isinstance(exc, KeyboardInterrupt):
            return _fail(events, "interrupted", protocol.EXIT_FAILURE)
        return _fail(
            events,
            f"{type(exc).__name__} while {events.phase}: {one_line(exc)}",
            protocol.EXIT_FAILURE,
        )
    events.emit(protocol.EVENT_SUMMARY, **summary)
    return protocol.EXIT_OK


def _fail(events: Events, message: str, code: int) -> int:
    events.emit(protocol.EVENT_ERROR, message=message)
    return code


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    # Orbax and grain may leave non-daemon threads behind after a failure;
    # the events are flushed, so leave without waiting for them.
    os._exit(code)
