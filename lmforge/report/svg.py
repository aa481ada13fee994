"""Small inline SVG charts (line charts and a labelled grid), written directly: a report embeds them as
text, so writing one costs microseconds where a plotting library costs a second per run."""

from __future__ import annotations

import html
import math

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round numbers spanning [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks or [lo]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10000 or abs(v) < 0.001:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}" if abs(v) >= 1 else f"{v:.3g}"


def line_chart(series: list[tuple[str, list[tuple[float, float]]]], title: str = "", xlabel: str = "step",
               width: int = 440, height: int = 260, markers: set[str] | None = None, diagonal: bool = False,
               limits: tuple[float, float, float, float] | None = None) -> str:
    """series: (label, [(x, y), ...]); `markers`: labels drawn with dots; `diagonal`: a dotted y = x."""
    pts = [(x, y) for _, s in series for x, y in s if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return ""
    x0, x1 = (limits[0], limits[1]) if limits else (min(p[0] for p in pts), max(p[0] for p in pts))
    y0, y1 = (limits[2], limits[3]) if limits else (min(p[1] for p in pts), max(p[1] for p in pts))
    xt, yt = nice_ticks(x0, x1), nice_ticks(y0, y1)
    x0, x1 = min(x0, xt[0]), max(x1, xt[-1])
    y0, y1 = min(y0, yt[0]), max(y1, yt[-1])
    left, right, top, bottom = 52, 12, 26 if title else 10, 34
    pw, ph = width - left - right, height - top - bottom

    def X(x):
        return left + (x - x0) / ((x1 - x0) or 1) * pw

    def Y(y):
        return top + ph - (y - y0) / ((y1 - y0) or 1) * ph

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
           "font-family='sans-serif' font-size='10'>", f"<rect width='{width}' height='{height}' fill='white'/>"]
    if title:
        out.append(f"<text x='{width / 2:.1f}' y='15' text-anchor='middle' font-size='12'>{html.escape(title)}</text>")
    for t in yt:
        out.append(f"<line x1='{left}' x2='{left + pw}' y1='{Y(t):.1f}' y2='{Y(t):.1f}' stroke='#e5e7eb'/>"
                   f"<text x='{left - 4}' y='{Y(t) + 3:.1f}' text-anchor='end' fill='#555'>{_label(t)}</text>")
    for t in xt:
        out.append(f"<line x1='{X(t):.1f}' x2='{X(t):.1f}' y1='{top}' y2='{top + ph}' stroke='#f0f1f3'/>"
                   f"<text x='{X(t):.1f}' y='{top + ph + 13}' text-anchor='middle' fill='#555'>{_label(t)}</text>")
    out.append(f"<rect x='{left}' y='{top}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>")
    out.append(f"<text x='{left + pw / 2:.1f}' y='{height - 4}' text-anchor='middle' fill='#333'>"
               f"{html.escape(xlabel)}</text>")
    if diagonal:
        out.append(f"<line x1='{X(x0):.1f}' y1='{Y(y0):.1f}' x2='{X(x1):.1f}' y2='{Y(y1):.1f}' stroke='#888' "
                   "stroke-dasharray='3,3'/>")
    for i, (label, s) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in s if math.isfinite(x) and math.isfinite(y))
        if not path:
            continue
        out.append(f"<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{path}'/>")
        if markers and label in markers:
            out += [f"<circle cx='{X(x):.1f}' cy='{Y(y):.1f}' r='2.5' fill='{color}'/>" for x, y in s]
        out.append(f"<rect x='{left + 8}' y='{top + 6 + 13 * i}' width='10' height='3' fill='{color}'/>"
                   f"<text x='{left + 22}' y='{top + 10 + 13 * i}' fill='#333'>{html.escape(label)}</text>")
    out.append("</svg>")
    return "".join(out)


def grid(matrix: list[list[int]], names: list[str], title: str = "", xlabel: str = "predicted",
         ylabel: str = "true") -> str:
    """A confusion matrix: cells shaded by count, counts written in them."""
    k = len(names)
    cell = max(18, min(48, 360 // max(k, 1)))
    left, top = 90, 30 if title else 12
    width, height = left + cell * k + 20, top + cell * k + 44
    hi = max((max(r) for r in matrix), default=0) or 1
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' "
           "font-size='10'>", f"<rect width='{width}' height='{height}' fill='white'/>"]
    if title:
        out.append(f"<text x='{width / 2:.1f}' y='16' text-anchor='middle' font-size='12'>{html.escape(title)}</text>")
    for i, row in enumerate(matrix):
        out.append(f"<text x='{left - 6}' y='{top + cell * i + cell / 2 + 3:.1f}' text-anchor='end'>"
                   f"{html.escape(str(names[i]))[:14]}</text>")
        for j, v in enumerate(row):
            shade = int(245 - 200 * v / hi)
            out.append(f"<rect x='{left + cell * j}' y='{top + cell * i}' width='{cell}' height='{cell}' "
                       f"fill='rgb({shade},{shade + 5 if shade < 250 else 250},255)' stroke='white'/>")
            if k <= 20:
                color = "white" if v > hi / 2 else "black"
                out.append(f"<text x='{left + cell * j + cell / 2:.1f}' y='{top + cell * i + cell / 2 + 3:.1f}' "
                           f"text-anchor='middle' fill='{color}'>{v}</text>")
    for j in range(k):
        out.append(f"<text x='{left + cell * j + cell / 2:.1f}' y='{top + cell * k + 13}' text-anchor='middle'>"
                   f"{html.escape(str(names[j]))[:8]}</text>")
    out.append(f"<text x='{left + cell * k / 2:.1f}' y='{height - 6}' text-anchor='middle' fill='#333'>{xlabel}</text>")
    out.append(f"<text x='12' y='{top + cell * k / 2:.1f}' fill='#333' transform='rotate(-90 12 {top + cell * k / 2:.1f})' "
               f"text-anchor='middle'>{ylabel}</text>")
    out.append("</svg>")
    return "".join(out)
