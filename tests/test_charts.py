"""Server-side SVG charts: pure functions, so plain unit tests."""

import math
import xml.etree.ElementTree as ET

from runs.pages import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(str(svg))  # noqa: S314 - our own output


def test_a_chart_is_well_formed_svg_with_one_line_per_series():
    svg = charts.line_chart(
        [
            charts.Series("train", [(1, 2.0), (2, 1.5), (3, 1.2)]),
            charts.Series("eval", [(2, 1.7)], color=charts.PALETTE[1], dashed=True),
        ]
    )
    root = parse(svg)
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2
    assert lines[1].get("stroke-dasharray") == "6 4"
    assert [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "legend"] == [
        "train",
        "eval",
    ]


def test_labels_are_escaped():
    svg = charts.line_chart(
        [charts.Series("<script>alert(1)</script> & co", [(1, 1.0), (2, 0.5)])],
        title='"><img src=x>',
    )
    assert "<script>" not in svg and "<img" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in svg
    parse(svg)


def test_no_points_gives_a_placeholder_and_non_finite_values_are_skipped():
    empty = charts.line_chart([charts.Series("train", [])], empty_text="Nothing <yet>")
    assert "Nothing &lt;yet&gt;" in empty and "<polyline" not in empty
    svg = charts.line_chart(
        [charts.Series("train", [(1, 1.0), (2, math.nan), (3, math.inf), (4, 0.5)])]
    )
    points = parse(svg).find(f"{SVG}polyline").get("points").split()
    assert len(points) == 2


def test_one_point_or_a_flat_series_still_draws_inside_the_plot():
    for series in ([(5, 1.0)], [(1, 2.0), (2, 2.0), (3, 2.0)]):
        root = parse(charts.line_chart([charts.Series("s", series)]))
        for pair in root.find(f"{SVG}polyline").get("points").split():
            x, y = map(float, pair.split(","))
            assert 0 <= x <= 640 and 0 <= y <= 280


def test_long_series_are_downsampled_keeping_the_last_point():
    points = [(step, 1.0 / step) for step in range(1, 10_001)]
    kept = charts.downsample(points, 400)
    assert len(kept) <= 401 and kept[0] == points[0] and kept[-1] == points[-1]
    svg = charts.line_chart([charts.Series("train", points)])
    assert len(parse(svg).find(f"{SVG}polyline").get("points").split()) <= 401


def test_ticks_are_round_numbers_covering_the_range():
    assert charts.nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    ticks = charts.nice_ticks(0.123, 0.987)
    assert ticks[0] >= 0.123 and ticks[-1] <= 0.987 and len(ticks) >= 3


def test_panels_come_loss_first_then_known_quantities_then_the_rest():
    metrics = {
        "train/zeta": [(1, 1.0)],
        "train/grad_norm": [(1, 0.5)],
        "eval/loss": [(1, 2.1)],
        "train/learning_rate": [(1, 0.1)],
    }
    panels = charts.run_panels(metrics)
    assert [p.key for p in panels] == ["loss", "learning_rate", "grad_norm", "zeta"]
    assert [p.title for p in panels] == ["Loss", "Learning rate", "Gradient norm", "Zeta"]
    # A run with nothing recorded yet still has its (empty) loss chart.
    [empty] = charts.run_panels({})
    assert "No loss recorded yet." in empty.svg
