"""Small display filters for the run pages."""

import json
import shlex

from django import template

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """12 s, 3 min 04 s, 2 h 05 min."""
    if seconds is None or seconds == "":
        return ""
    seconds = int(round(float(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def pretty_json(value) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)


@register.filter
def argv(value) -> str:
    """The argv as one shell-quoted line, for reading and copying (no shell ever runs it)."""
    return shlex.join(str(part) for part in (value or []))


@register.filter
def cell(value) -> str:
    """A comparison-table value: JSON for structures, plain text otherwise."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list | bool):
        return json.dumps(value, default=str)
    return str(value)


@register.filter
def percent(value) -> str:
    return "" if value is None else f"{float(value) * 100:.0f}"


@register.filter
def short_id(value) -> str:
    return str(value)[:8]
