"""Path confinement. Every path a request can influence is checked here, and checked again
right before a process is launched."""

import re
from pathlib import Path

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Files that training wrote (Orbax uses names like `_CHECKPOINT_METADATA`): looser, for
# reading inside a run's folder only. Still no hidden names, `..` or separators.
READ_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@=+-]{0,254}$")


class UnsafePath(ValueError):
    pass


def safe_relative(root: Path, relative: str, *, segment_re: re.Pattern = _SEGMENT_RE) -> Path:
    """Resolve `relative` under `root`, refusing anything that could land outside it.

    Refused: empty, absolute, NUL, backslashes, `..` or odd segments, and anything whose
    resolved path (symlinks followed) is not strictly inside the resolved root.
    """
    if not isinstance(relative, str) or not relative or len(relative) > 1024:
        raise UnsafePath("must be a relative path of 1 to 1024 characters")
    if "\x00" in relative or "\\" in relative:
        raise UnsafePath("must not contain NUL or backslashes")
    if relative.startswith("/"):
        raise UnsafePath("must be relative to the artifacts folder, not absolute")
    parts = relative.strip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath("must not contain empty, '.' or '..' segments")
        if not segment_re.match(part):
            raise UnsafePath(
                f"segment '{part[:40]}' may only use letters, digits, '.', '_' and '-', "
                "and must start with a letter or digit"
            )
    root = root.resolve()
    target = root.joinpath(*parts).resolve()
    if target == root or not target.is_relative_to(root):
        raise UnsafePath("must stay inside the artifacts folder")
    return target


def is_safe_segment(value: str) -> bool:
    return isinstance(value, str) and bool(_SEGMENT_RE.match(value))
