"""Loss charts drawn on the server as SVG: no JavaScript library, works without scripts,
and the page's polling can replace the chart like any other fragment.

Pure functions from series to an SVG string. Every piece of text that reaches the SVG
(labels, titles) is escaped here, so the result is safe to insert into a page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
# A long run reports thousands of steps; a chart a few hundred pixels wide cannot show more.
MAX_POINTS = 400


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str = PALETTE[0]
    dashed: bool = False
    markers: bool = field(default=False)
    # A faded series (raw values under their smoothed line, a parent run's history) is drawn
    # thin and translucent, without point markers; `legend=False` leaves it out of the legend.
    opacity: float = 1.0
    legend: bool = True


def _finite(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [
        (float(x), float(y))
        for x, y in points
        if isinstance(x, int | float)
        and isinstance(y, int | float)
        and math.isfinite(x)
        and math.isfinite(y)
    ]


def downsample(points: list[tuple[float, float]], limit: int = MAX_POINTS):
    """At most `limit` points: consecutive groups each keep their first and last point and
    their lowest and highest, in order, so a spike survives (every k-th point would drop
    it) and the newest value is always drawn."""
    if len(points) <= limit:
        return points
    size = math.ceil(len(points) / max(1, limit // 4))
    kept = []
    for start in range(0, len(points), size):
        group = points[start : start + size]
        low = min(range(len(group)), key=lambda i: group[i][1])
        high = max(range(len(group)), key=lambda i: group[i][1])
        kept.extend(group[i] for i in sorted({0, low, high, len(group) - 1}))
    return kept


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


# long: one SVG drawn top to bottom (axes, grid, series, legend); split, it reads worse.
def line_chart(
    series: Sequence[Series],
    *,
    title: str = "Loss",
    x_label: str = "step",
    y_label: str = "loss",
    width: int = 640,
    height: int = 280,
    empty_text: str = "No loss recorded yet.",
) -> SafeString:
    """An SVG line chart of `series` (x: step, y: value) with axes, ticks and a legend."""
    drawn = [(s, downsample(_finite(s.points))) for s in series]
    drawn = [(s, pts) for s, pts in drawn if pts]
    label = escape(title)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{label}"><title>{label}</title>'
    )
    if not drawn:
        return mark_safe(  # noqa: S308 - every text above and below is escaped
            head + f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" rx="6" '
            'fill="#fafbfc" stroke="#e4e7ec"/>'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" '
            f'font-size="16" class="chart-empty" fill="#667085">{escape(empty_text)}</text></svg>'
        )

    # The legend sits above the plot and wraps onto as many rows as it needs.
    legend, row, x = [], 0, 56.0
    for s, _ in drawn:
        if not s.legend:
            continue
        item_width = 34 + 6.5 * min(len(s.label), 60)
        if x + item_width > width - 8 and x > 56:
            row, x = row + 1, 56.0
        legend.append((s, x, 14 + row * 18))
        x += item_width + 12
    top = 14 + (row + 1) * 18
    left, right, bottom = 56, 14, 40
    plot_w, plot_h = width - left - right, height - top - bottom

    xs = [p[0] for _, pts in drawn for p in pts]
    ys = [p[1] for _, pts in drawn for p in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = min(ys), max(ys)
    pad = (y_hi - y_lo) * 0.05 or (abs(y_hi) * 0.1 or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(value: float) -> float:
        return left + (value - x_lo) / (x_hi - x_lo) * plot_w

    def py(value: float) -> float:
        return top + (1 - (value - y_lo) / (y_hi - y_lo)) * plot_h

    parts = [head]
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#e4e7ec"/>'
    )
    for tick in nice_ticks(y_lo, y_hi):
        y = py(tick)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f3"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#667085">{escape(_fmt(tick))}</text>'
        )
    x_ticks = [t for t in nice_ticks(x_lo, x_hi, 6) if t == int(t)] or [x_lo, x_hi]
    for tick in x_ticks:
        x = px(tick)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
            'stroke="#98a2b3"/>'
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11" '
            f'fill="#667085">{escape(_fmt(tick))}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" font-size="12" '
        f'fill="#344054">{escape(x_label)}</text>'
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" font-size="12" '
        f'fill="#344054" transform="rotate(-90 14 {top + plot_h / 2})">{escape(y_label)}</text>'
    )
    for s, pts in drawn:
        color = escape(s.color)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        faded = s.opacity < 1
        look = (
            f' stroke-width="1.25" stroke-opacity="{s.opacity:.2f}"'
            if faded
            else ' stroke-width="2"'
        )
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(
            f'<polyline fill="none" stroke="{color}"{look}{dash} '
            f'stroke-linejoin="round" points="{coords}"><title>{escape(s.label)}</title>'
            "</polyline>"
        )
        if not faded and (s.markers or len(pts) <= 60):
            for x, y in pts:
                parts.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}">'
                    f"<title>{escape(s.label)} · step {escape(_fmt(x))}: {escape(_fmt(y))}"
                    "</title></circle>"
                )
    for s, x, y in legend:
        color = escape(s.color)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        dash += f' stroke-opacity="{s.opacity:.2f}"' if s.opacity < 1 else ""
        parts.append(
            f'<line x1="{x:.1f}" x2="{x + 24:.1f}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" '
            f'stroke-width="2"{dash}/>'
            f'<text x="{x + 30:.1f}" y="{y}" font-size="12" fill="#344054" class="legend">'
            f"{escape(s.label[:60])}</text>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text in it was escaped above


def histogram_geometry(stats: dict[str, Any], *, width: int = 480, height: int = 110) -> dict:
    """Bar geometry for the length histogram (drawn as inline SVG, no script needed), with
    a marker where max_seq_length falls inside the range."""
    bins = stats["histogram"]
    if not bins:
        return {}
    peak = max(b["count"] for b in bins) or 1
    plot = height - 18
    step = width / len(bins)
    bars = []
    for n, b in enumerate(bins):
        h = round(b["count"] / peak * plot, 1) if b["count"] else 0
        bars.append(
            {
                "x": round(n * step, 1),
                "y": round(plot - h, 1),
                "w": round(max(step - 1, 1), 1),
                "h": h,
                "start": b["start"],
                "end": b["end"] - 1,
                "count": b["count"],
                "over": b["start"] >= stats["max_seq_length"],
            }
        )
    lo, hi = bins[0]["start"], bins[-1]["end"]
    limit = stats["max_seq_length"]
    marker = round((limit - lo) / (hi - lo) * width, 1) if lo <= limit < hi else None
    return {
        "width": width,
        "height": height,
        "plot": plot,
        "bars": bars,
        "marker": marker,
        "lo": lo,
        "hi": hi - 1,
    }


# --- every recorded series, as small multiples --------------------------------------------

# TensorBoard's default smoothing weight: each point is 0.6 of the running average and 0.4
# of the new value, debiased at the start so the curve does not begin at zero.
EMA_WEIGHT = 0.6
# Fewer points than this are not smoothed: each one is worth seeing as it is.
SMOOTH_MIN_POINTS = 8
# Panels first in this order (by the part of the name after "train/" or "eval/"), then the
# rest alphabetically; titles and y labels of the known ones.
QUANTITIES = {
    "loss": ("Loss", "loss"),
    "perplexity": ("Perplexity", "perplexity"),
    "learning_rate": ("Learning rate", "learning rate"),
    "grad_norm": ("Gradient norm", "global norm"),
    "step_time": ("Step time", "seconds"),
    "seconds_per_step": ("Step time", "seconds"),
    "steps_per_sec": ("Steps per second", "steps/s"),
    "tokens_per_second": ("Tokens per second", "tokens/s"),
    "tokens_per_sec": ("Tokens per second", "tokens/s"),
}
# Values a schedule sets, not measurements: drawn as they are.
NOT_SMOOTHED = {"learning_rate"}
SPLIT_ORDER = ("train", "eval")


@dataclass(frozen=True)
class Panel:
    key: str  # the quantity ("loss", "grad_norm", ...), also the element id's suffix
    title: str
    svg: SafeString


def ema(points: Sequence[tuple[float, float]], weight: float = EMA_WEIGHT):
    """Debiased exponential moving average of the finite points, step by step."""
    smoothed, average = [], 0.0
    for count, (x, y) in enumerate(_finite(points), start=1):
        average = average * weight + (1 - weight) * y
        smoothed.append((x, average / (1 - weight**count)))
    return smoothed


def _quantity(name: str) -> tuple[str, str]:
    """("train", "loss") from "train/loss"; ("", name) for a name without a split."""
    split, _, rest = name.partition("/")
    return (split, rest) if rest else ("", name)


def quantities(names) -> list[str]:
    """The panels the metric names call for, known ones first in their order."""
    found = {_quantity(name)[1] for name in names}
    known = [q for q in QUANTITIES if q in found]
    return known + sorted(found - set(known))


def _split_key(name: str) -> tuple[int, str]:
    split = _quantity(name)[0]
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), name)


def _styled(name: str, points, *, label: str, color: str, fade: float = 1.0) -> list[Series]:
    """One metric's lines: eval-like sparse series dashed with markers; a noisy series as
    its raw values, faint, under their EMA; a schedule as it is."""
    split, quantity = _quantity(name)
    if split == "eval":
        return [Series(label, points, color, dashed=True, markers=True, opacity=fade)]
    if quantity in NOT_SMOOTHED or len(points) < SMOOTH_MIN_POINTS:
        return [Series(label, points, color, opacity=fade)]
    return [
        Series(f"{label} (raw)", points, color, opacity=0.3 * fade, legend=False),
        Series(f"{label} (EMA)", ema(points), color, opacity=fade),
    ]


def run_panels(
    metrics: dict[str, list[tuple[int, float]]],
    *,
    parent: dict[str, list[tuple[int, float]]] | None = None,
    resume_step: int | None = None,
    width: int = 480,
    height: int = 240,
    main: tuple[int, int] = (640, 280),
) -> list[Panel]:
    """One chart per quantity of a run (loss first: train and eval together), the step as
    x. A continued run also draws its parent's points up to the resume step, faded."""
    parent = {
        name: [p for p in points if resume_step is None or p[0] <= resume_step]
        for name, points in (parent or {}).items()
    }
    names = [n for n, pts in metrics.items() if pts] + [n for n, pts in parent.items() if pts]
    panels = []
    # Loss always comes first (the run page shows it large), recorded or not yet.
    for quantity in ["loss"] + [q for q in quantities(names) if q != "loss"]:
        size = main if quantity == "loss" else (width, height)
        title, y_label = QUANTITIES.get(quantity, (quantity.replace("_", " ").capitalize(), ""))
        series = []
        for source, fade, prefix in ((parent, 0.4, "parent "), (metrics, 1.0, "")):
            mine = sorted((n for n in source if _quantity(n)[1] == quantity), key=_split_key)
            for name in mine:
                split = _quantity(name)[0] or quantity
                color = PALETTE[_split_key(name)[0]]  # train, eval, other: fixed colours
                series += _styled(
                    name, source[name], label=f"{prefix}{split}", color=color, fade=fade
                )
        svg = line_chart(
            series,
            title=f"{title} by step",
            y_label=y_label or quantity,
            width=size[0],
            height=size[1],
            empty_text=f"No {title.lower()} recorded yet.",
        )
        panels.append(Panel(quantity, title, svg))
    return panels


def unshared_quantities(
    runs: Sequence[tuple[str, str, dict[str, list[tuple[int, float]]]]],
) -> list[tuple[str, list[str]]]:
    """(run label, quantities) of what only that run recorded: runs of different methods
    share loss, and compare_panels draws only what at least two runs have."""
    recorded = [quantities(n for n, pts in m.items() if pts) for _, _, m in runs]
    out = []
    for index, (label, _, _) in enumerate(runs):
        others = {q for i, found in enumerate(recorded) if i != index for q in found}
        alone = [q for q in recorded[index] if q not in others]
        if alone:
            out.append((label, alone))
    return out


def compare_panels(
    runs: Sequence[tuple[str, str, dict[str, list[tuple[int, float]]]]],
    *,
    width: int = 480,
    height: int = 260,
    main: tuple[int, int] = (960, 380),
) -> list[Panel]:
    """One chart per quantity that at least two of the runs recorded; one colour per run
    (`runs` holds (label, colour, metrics) each). Noisy series are drawn as their EMA only,
    so that several runs stay readable."""
    counts: dict[str, int] = {}
    for _, _, metrics in runs:
        for quantity in quantities(n for n, pts in metrics.items() if pts):
            counts[quantity] = counts.get(quantity, 0) + 1
    panels = []
    shared = quantities(q for q, n in counts.items() if n >= 2)
    for quantity in ["loss"] + [q for q in shared if q != "loss"]:
        size = main if quantity == "loss" else (width, height)
        title, y_label = QUANTITIES.get(quantity, (quantity.replace("_", " ").capitalize(), ""))
        series = []
        for label, color, metrics in runs:
            mine = sorted((n for n in metrics if _quantity(n)[1] == quantity), key=_split_key)
            for name in mine:
                split = _quantity(name)[0]
                text = f"{label} {split}".strip()
                series += [
                    s for s in _styled(name, metrics[name], label=text, color=color) if s.legend
                ]
        svg = line_chart(
            series,
            title=f"{title} by step",
            y_label=y_label or quantity,
            width=size[0],
            height=size[1],
        )
        panels.append(Panel(quantity, title, svg))
    return panels
