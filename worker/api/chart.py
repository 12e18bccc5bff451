"""The stories-per-day chart of the operator page: inline SVG drawn here, no JavaScript."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 36, 8, 28, 30


def svg(days: list[dict[str, Any]]) -> Markup:
    """Two bars a day (stories, defence stories) from ``health.stories_per_day`` rows."""
    peak = max([d["stories"] for d in days] + [d["defence"] for d in days] + [1])
    plot_h = HEIGHT - TOP - BOTTOM
    group = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    bar = group * 0.36
    parts = [f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-labelledby="chart-title">',
             '<title id="chart-title">Stories and defence stories first seen per day (UTC)</title>',
             f'<rect class="legend stories" x="{LEFT}" y="6" width="10" height="10"/>'
             f'<text x="{LEFT + 14}" y="15">stories</text>',
             f'<rect class="legend defence" x="{LEFT + 80}" y="6" width="10" height="10"/>'
             f'<text x="{LEFT + 94}" y="15">defence stories</text>',
             f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}"/>',
             f'<text class="tick" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{peak}</text>',
             f'<text class="tick" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>']
    for i, d in enumerate(days):
        x = LEFT + i * group + group * 0.12
        for j, (kind, count) in enumerate((("stories", d["stories"]), ("defence", d["defence"]))):
            h = plot_h * count / peak
            parts.append(f'<rect class="bar {kind}" data-day="{escape(d["day"])}" data-count="{count}" '
                         f'x="{x + j * bar:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}">'
                         f'<title>{escape(d["day"])}: {count} {"defence " if kind == "defence" else ""}'
                         f'stor{"y" if count == 1 else "ies"}</title></rect>')
        if (len(days) - 1 - i) % 2 == 0:          # every other day, counting back from today
            parts.append(f'<text class="tick" x="{x + bar:.1f}" y="{HEIGHT - 12}" text-anchor="middle">'
                         f'{escape(d["day"][5:])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
