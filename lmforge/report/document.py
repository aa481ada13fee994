"""A report as a list of sections (tables, figures, text), rendered to one self-contained HTML file
(figures as base64 PNG) and to Markdown (figures as PNG files beside it)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.atomic import atomic_write_bytes, atomic_write_text


@dataclass
class Table:
    rows: list[list]
    header: list[str] | None = None


@dataclass
class Figure:
    """Charts shown side by side: inline SVG (or PNG bytes) in the HTML, files beside the Markdown."""

    name: str  # file stem in the Markdown's figure folder
    charts: list[str | bytes]
    caption: str = ""

    def files(self) -> list[tuple[str, str | bytes]]:
        many = len(self.charts) > 1
        return [(f"{self.name}{f'_{i + 1}' if many else ''}.{'png' if isinstance(c, bytes) else 'svg'}", c)
                for i, c in enumerate(self.charts)]


@dataclass
class Text:
    text: str
    pre: bool = False  # preformatted (samples, errors)


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


def figure_png(fig, software: str | None = None) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed); `software` goes in the PNG's Software field."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": software} if software else None)
    plt.close(fig)
    return buf.getvalue()


def fmt_cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.4f}".rstrip("0").rstrip(".")
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:980px;
color:#1d2430;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;border-bottom:1px solid #dde2ea;padding-bottom:.2rem;
margin-top:2rem}.sub{color:#5b6575;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}td,th{border:1px solid #dde2ea;padding:.25rem .6rem;
text-align:left;vertical-align:top}th{background:#f3f5f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
img,svg{max-width:100%;border:1px solid #eef0f4}figure{margin:.8rem 0}
.charts{display:flex;flex-wrap:wrap;gap:.6rem}figcaption{color:#5b6575;font-size:.85rem}
pre{background:#f6f8fa;padding:.6rem;white-space:pre-wrap;word-break:break-word;font-size:.85rem}
"""


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def to_html(title: str, subtitle: str, sections: list[Section]) -> str:
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(subtitle)}</p>"]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, Table):
                out.append("<table>")
                if b.header:
                    out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in b.header) + "</tr>")
                for row in b.rows:
                    out.append("<tr>" + "".join(
                        f"<td class='num'>{html.escape(fmt_cell(c))}</td>" if _is_num(c)
                        else f"<td>{html.escape(fmt_cell(c))}</td>" for c in row) + "</tr>")
                out.append("</table>")
            elif isinstance(b, Figure):
                charts = [c if isinstance(c, str) else
                          f"<img alt='{html.escape(b.caption or b.name)}' "
                          f"src='data:image/png;base64,{base64.b64encode(c).decode('ascii')}'>" for c in b.charts]
                out.append(f"<figure><div class='charts'>{''.join(charts)}</div>"
                           + (f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else "")
                           + "</figure>")
            elif isinstance(b, Text):
                out.append(f"<pre>{html.escape(b.text)}</pre>" if b.pre else f"<p>{html.escape(b.text)}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _md_cell(v) -> str:
    return fmt_cell(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, subtitle: str, sections: list[Section], figure_dir: str) -> str:
    out = [f"# {title}", "", f"_{subtitle}_", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                header = b.header or ["", ""]
                width = max([len(header)] + [len(r) for r in b.rows])
                header = list(header) + [""] * (width - len(header))
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "---|" * width)
                for row in b.rows:
                    out.append("| " + " | ".join(_md_cell(c) for c in list(row) + [""] * (width - len(row))) + " |")
                out.append("")
            elif isinstance(b, Figure):
                out += [" ".join(f"![{b.caption or b.name}]({figure_dir}/{f})" for f, _ in b.files()), ""]
            elif isinstance(b, Text):
                out += (["```", b.text, "```"] if b.pre else [b.text]) + [""]
    return "\n".join(out)


def write(run_dir: Path, title: str, subtitle: str, sections: list[Section]) -> tuple[Path, Path]:
    """RUN/report.html and RUN/report.md (with RUN/report_files/*.png)."""
    run_dir = Path(run_dir)
    figure_dir = "report_files"
    for s in sections:
        for b in s.blocks:
            if isinstance(b, Figure):
                for f, chart in b.files():
                    atomic_write_bytes(run_dir / figure_dir / f, chart if isinstance(chart, bytes) else chart.encode())
    html_path, md_path = run_dir / "report.html", run_dir / "report.md"
    atomic_write_text(html_path, to_html(title, subtitle, sections))
    atomic_write_text(md_path, to_markdown(title, subtitle, sections, figure_dir))
    return html_path, md_path
