"""The shared frame of the launcher's jobs other than training (export, evaluation): read the
job config, set up the events and logging, run the work, and map failures to the protocol's
error line and exit code exactly as training does (runs.launcher.__main__)."""

import sys
import time
import traceback
import warnings

from runs import protocol
from runs.launcher.config import read_json
from runs.launcher.events import Events, LaunchError, one_line, take_over_stdout


def read_job_config(path: str) -> dict:
    config = read_json(path)
    if not isinstance(config, dict) or config.get("schema") != protocol.SCHEMA_VERSION:
        raise LaunchError(
            f"config file {path} is not a job config of schema {protocol.SCHEMA_VERSION}"
        )
    source = config.get("source")
    if not isinstance(source, dict) or source.get("family") not in protocol.FAMILIES:
        raise LaunchError(
            "config has no valid 'source' section (model_dir, family, checkpoint_dir)"
        )
    return config


def run_job(argv: list[str], work, usage: str) -> int:
    """Run `work(config, events) -> summary dict`; the exit code of the protocol."""
    from runs.launcher.__main__ import _fail, _is_out_of_memory, _log_to_stderr

    started = time.monotonic()
    events = Events(take_over_stdout())
    _log_to_stderr()
    # Tunix finds the mesh through the legacy `with mesh:` context (see train.py).
    warnings.filterwarnings(
        "ignore", message=".*`with mesh:` context manager", category=DeprecationWarning
    )
    events.enter(protocol.PHASE_STARTING)
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        return _fail(events, f"usage: {usage}", protocol.EXIT_BAD_INPUT)
    try:
        summary = work(read_job_config(argv[0]), events)
    except LaunchError as exc:
        return _fail(events, str(exc), exc.code)
    except BaseException as exc:  # noqa: BLE001 - the protocol needs an error line for anything
        traceback.print_exc(file=sys.stderr)
        if _is_out_of_memory(exc):
            message = f"out of memory while {events.phase}: {one_line(exc)}"
            return _fail(events, message, protocol.EXIT_OUT_OF_MEMORY)
        message = f"{type(exc).__name__} while {events.phase}: {one_line(exc)}"
        return _fail(events, message, protocol.EXIT_FAILURE)
    events.enter(protocol.PHASE_DONE)
    events.emit(protocol.EVENT_SUMMARY, **summary, seconds=round(time.monotonic() - started, 3))
    return protocol.EXIT_OK
