"""The report as one HTML page: `index.html` beside its PNG pictures, readable without TensorBoard.

Each part of the report is a `Section`: its numbers (report.json), the rows of its table (the same
numbers, named and explained), notes, and its pictures with their captions; `page` lays them out in
order, so a section's function is the one place a number is computed, named and explained.
Every number is printed as `json.dumps` writes it into report.json (the report rounds them once, before
both), so the page and the file agree to the digit; a headless browser checks that (tests/test_report.py).
Training curves are drawn as inline SVG polylines: a few lines of markup, not a plotting library.
"""

import html
import json
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 2px 12px 2px 0; text-align: left;
vertical-align: top; } td.n { font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0 1.5em 1em 0; vertical-align: top; } figcaption { max-width: 560px; }
img { image-rendering: pixelated; border: 1px solid #ddd; } .note { color: #555; max-width: 60em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 13px; }
"""
CURVE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def number(value: object) -> str:
    """A value as report.json spells it."""
    return json.dumps(value)


def table(rows: Sequence[tuple[str, object, str]]) -> str:
    """(name, value, what it means) rows; values that are numbers or lists of numbers print as in the JSON."""
    cells = []
    for name, value, meaning in rows:
        shown = html.escape(value if isinstance(value, str) else number(value))
        cells.append(f"<tr><th>{html.escape(name)}</th><td class=n>{shown}</td><td>{html.escape(meaning)}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def figure(png: str, caption: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return (
        f'<figure><img src="{html.escape(png)}" alt="{html.escape(caption)}"{size}>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def curves_svg(
    title: str, curves: Mapping[str, Sequence[tuple[int, float]]], width: int = 520, height: int = 260
) -> str:
    """Line charts of (step, value) series on shared axes, with the range of each axis written at its ends."""
    series = {name: points for name, points in curves.items() if points}
    if not series:
        return ""
    steps = [s for points in series.values() for s, _ in points]
    values = [v for points in series.values() for _, v in points]
    x0, x1, y0, y1 = min(steps), max(steps), min(values), max(values)
    pad, left = 20, 60

    def x(step: float) -> float:
        return left + (step - x0) / max(x1 - x0, 1) * (width - left - pad)

    def y(value: float) -> float:
        return pad + (y1 - value) / max(y1 - y0, 1e-12) * (height - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" role="img" '
        f'aria-label="{html.escape(title)}"><rect width="100%" height="100%" fill="white"/>',
        f'<line x1="{left}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>',
        f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{height - pad}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{pad + 4}" text-anchor="end" font-size="11">{y1:.4g}</text>',
        f'<text x="{left - 4}" y="{height - pad}" text-anchor="end" font-size="11">{y0:.4g}</text>',
        f'<text x="{left}" y="{height - 4}" font-size="11">step {x0}</text>',
        f'<text x="{width - pad}" y="{height - 4}" text-anchor="end" font-size="11">step {x1}</text>',
    ]
    for i, (name, points) in enumerate(series.items()):
        colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
        line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(f'<text x="{left + 10 + 150 * i}" y="{height + 14}" font-size="12" fill="{colour}">')
        parts.append(f"{html.escape(name)} (last {points[-1][1]:.4g})</text>")
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{html.escape(title)}</figcaption></figure>"


class Section(NamedTuple):
    """One part of the report: `numbers` go into report.json under `key` (and, those that are numbers, to
    the run's logger as `report/<key>/<name>`); `rows` are the page's table of them, (name, value, what it
    means); `notes` follow the table; `pictures` (name -> (image (3, H, W) in [0, 1], caption)) are saved
    as `<name>.png` and shown in order; `html` is drawn last (charts, sub-tables)."""

    key: str
    title: str
    numbers: dict
    rows: list[tuple[str, object, str]] = []
    notes: list[str] = []
    pictures: dict[str, tuple[torch.Tensor, str]] = {}
    html: str = ""


def page(title: str, sections: Sequence[Section]) -> str:
    """The whole document: a title, then each section's heading, table, notes, pictures and other HTML.
    A picture is shown larger than its pixels (digits are small), at most 600 pixels wide."""
    parts = []
    for section in sections:
        body = table(section.rows) if section.rows else ""
        body += "".join(paragraph(note) for note in section.notes)
        for name, (picture, caption) in section.pictures.items():
            body += figure(f"{name}.png", caption, min(int(1.5 * picture.shape[-1]), 600))
        parts.append((section.title, body + section.html))
    body = "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in parts)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def paragraph(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'
