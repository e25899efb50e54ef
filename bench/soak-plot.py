#!/usr/bin/env python3
"""Plots a soak's samples (bench/soak.sh's soak.csv) as one SVG of four stacked charts over time:
server RSS (MiB), open file descriptors, the legitimate clients' connect p99 and API p99 (ms),
with the attack of each minute shaded and named. Standard library only.

    bench/soak-plot.py soak.csv soak.svg
"""

from __future__ import annotations

import csv
import sys

WIDTH, CHART, GAP, LEFT, TOP = 960, 120, 34, 70, 40
PANELS = [("rss_mib", "server RSS, MiB"), ("fds", "server open fds"),
          ("connect_p99_ms", "legit connect p99, ms"), ("api_p99_ms", "legit API p99, ms")]
SHADES = ["#f3f3f3", "#e4ecf7"]


def main(source: str, target: str) -> None:
    rows = list(csv.DictReader(open(source)))
    if not rows:
        raise SystemExit("no samples")
    seconds = [float(row["seconds"]) for row in rows]
    end = max(seconds)
    plot_width = WIDTH - LEFT - 20

    def x(t: float) -> float:
        return LEFT + plot_width * t / end

    height = TOP + len(PANELS) * (CHART + GAP) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<text x="{LEFT}" y="16" font-size="13">certfleet soak: {len(rows)} samples over {end / 60:.0f} min, '
           'an attack per shaded band (names on top)</text>']
    # Attack phases: consecutive samples with the same attack.
    phases, start = [], 0.0
    for index, row in enumerate(rows):
        if index + 1 == len(rows) or rows[index + 1]["attack"] != row["attack"]:
            phases.append((start, seconds[index], row["attack"]))
            start = seconds[index]
    for number, (begin, finish, attack) in enumerate(phases):
        shade = SHADES[number % 2]
        out.append(f'<rect x="{x(begin):.1f}" y="{TOP - 8}" width="{x(finish) - x(begin):.1f}" '
                   f'height="{height - TOP - 2}" fill="{shade}"/>')
        if finish - begin >= 50 and number < 7:
            out.append(f'<text x="{x(begin) + 2:.1f}" y="{TOP - 10}" font-size="9" '
                       f'transform="rotate(-12 {x(begin) + 2:.1f} {TOP - 10})">{attack}</text>')
    for panel, (column, label) in enumerate(PANELS):
        values = [float(row[column]) for row in rows]
        top = TOP + panel * (CHART + GAP)
        high = max(values) * 1.15 or 1.0

        def y(v: float) -> float:
            return top + CHART - CHART * v / high

        out.append(f'<line x1="{LEFT}" y1="{top + CHART}" x2="{LEFT + plot_width}" y2="{top + CHART}" stroke="#888"/>')
        out.append(f'<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{top + CHART}" stroke="#888"/>')
        for tick in (0.0, high / 2, high / 1.15):
            out.append(f'<text x="{LEFT - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.0f}</text>')
        out.append(f'<text x="{LEFT + 4}" y="{top + 12}" font-weight="bold">{label} '
                   f'(min {min(values):.1f}, max {max(values):.1f})</text>')
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(seconds, values))
        out.append(f'<polyline fill="none" stroke="#1f5fa8" stroke-width="1.3" points="{points}"/>')
    for minute in range(0, int(end // 60) + 1, 10):
        out.append(f'<text x="{x(minute * 60):.1f}" y="{height - 2}" text-anchor="middle">{minute} min</text>')
    out.append("</svg>")
    open(target, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
