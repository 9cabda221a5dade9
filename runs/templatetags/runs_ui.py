"""Small display filters for the run pages."""

import json
import shlex

from django import template

from runs import formatting

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """1h 02m 03s, 4m 05s, 6s (runs.formatting.duration); empty when unknown."""
    if seconds is None or seconds == "":
        return ""
    return formatting.duration(float(seconds))


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


@register.filter
def plan_sentence(plan) -> str:
    """What a run will train, in one sentence (runs.formatting.plan_sentence)."""
    return formatting.plan_sentence(plan) if plan else ""
