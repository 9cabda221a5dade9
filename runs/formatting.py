"""Numbers for people: one byte-size and one duration formatter for the whole app.
Standard library only."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """'512 MiB' for a round size; '4.2 KiB (4299 bytes)' when rounding would hide it."""
    value, unit = float(n), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    if unit == "bytes":
        return f"{n} bytes"
    if value == int(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit} ({n} bytes)"


def duration(seconds: float | None) -> str:
    """'1h 02m 03s', '4m 05s', '6s'; '-' when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
