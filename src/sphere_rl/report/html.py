"""A self-contained HTML report: one file, no network access when opened.

A report is a title and a flat list of items: :class:`Heading` (listed in the table of contents),
:class:`Text` (markdown-ish paragraphs), :class:`Table` (a pandas DataFrame), :class:`Figure` (a PNG,
inlined as base64) and :class:`Geometry` (the interactive 3D update-geometry view of
:mod:`sphere_rl.report.geometry`). plotly.js is inlined once, from the installed plotly package, and
only when the report has a :class:`Geometry` item. A Content-Security-Policy in the page blocks any
request the page could still try to make (the page itself needs none).

    write_report("report.html", title="Sweep", sections=[
        Heading("Results"), Text("Final success per task, **mean over 5 seeds**."), Table(df),
        Figure(png_bytes, caption="r_e(K) over the sequence"), Heading("Update geometry"), Geometry(runs),
    ])
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

from sphere_rl.report.geometry import DEFAULT_DIV_ID, READING_GUIDE, GeometryRun, geometry_html
from sphere_rl.runs.atomic import atomic_write_text

__all__ = ["Heading", "Text", "Table", "Figure", "Geometry", "Item", "format_number", "text_to_html",
           "render_report", "write_report"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Heading:
    """A section heading (level 2) or sub-heading (level 3); both appear in the table of contents."""

    text: str
    level: int = 2

    def __post_init__(self) -> None:
        if self.level not in (2, 3):
            raise ValueError(f"heading level must be 2 or 3, got {self.level}")


@dataclass(frozen=True)
class Text:
    """Markdown-ish text: paragraphs separated by blank lines; a block of lines starting with ``- `` or
    ``* `` is a bullet list; inline ``code``, **bold** and *italic*. Everything else is escaped (no raw HTML)."""

    text: str


@dataclass(frozen=True)
class Table:
    """A DataFrame as an HTML table. Numbers are formatted with :func:`format_number` (``digits``
    significant digits); the index is shown when ``index`` is True, or when None and it is not a plain
    0..n-1 range. MultiIndex columns are joined with `` / ``."""

    data: pd.DataFrame
    caption: str | None = None
    digits: int = 3
    index: bool | None = None


@dataclass(frozen=True)
class Figure:
    """A PNG image, inlined as base64: PNG bytes, a path to a PNG file, or a matplotlib figure (saved as PNG)."""

    image: Any
    caption: str | None = None
    alt: str | None = None


@dataclass(frozen=True)
class Geometry:
    """The interactive 3D update-geometry view (:func:`sphere_rl.report.geometry.geometry_html`) of ``runs``,
    one column per run. ``caption`` defaults to ``geometry.READING_GUIDE`` (``""`` for none); ``div_id``
    defaults to a unique id per view; ``options`` go to ``geometry_figure``."""

    runs: Sequence[GeometryRun]
    caption: str | None = None
    div_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


Item = Union[Heading, Text, Table, Figure, Geometry]


# --------------------------------------------------------------------------------------------- text
_INLINE = [
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])"), r"<em>\1</em>"),
]


def _inline(text: str) -> str:
    """Escape ``text`` and apply the inline markup; backtick spans are code and get no further markup."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick stays a literal backtick
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    out = []
    for k, part in enumerate(parts):
        escaped = html.escape(part, quote=False)
        if k % 2:
            out.append(f"<code>{escaped}</code>")
        else:
            for pattern, repl in _INLINE:
                escaped = pattern.sub(repl, escaped)
            out.append(escaped)
    return "".join(out)


_BULLET = re.compile(r"^\s*[-*]\s+")


def text_to_html(text: str) -> str:
    """Markdown-ish text (see :class:`Text`) as HTML paragraphs and lists; all input is escaped."""
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    out = []
    for block in blocks:
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if all(_BULLET.match(ln) for ln in lines):
            items = "".join(f"<li>{_inline(_BULLET.sub('', ln).strip())}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "\n".join(out)


# -------------------------------------------------------------------------------------------- tables
def format_number(x: Any, digits: int = 3) -> str:
    """A table cell: integers in full (with thousands separators), floats with ``digits`` significant digits
    in fixed notation (scientific below 1e-3), large floats without decimals, missing values as ``–``."""
    if x is None:
        return "–"
    if isinstance(x, (bool,)) or not isinstance(x, numbers.Number):
        return str(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    value = float(x)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0.0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if abs(value) >= 10 ** max(digits, 4) - 0.5:
        return f"{value:,.0f}"
    if magnitude < -3:
        return f"{value:.{max(digits - 1, 0)}e}"
    decimals = max(digits - 1 - magnitude, 0)
    return f"{value:.{decimals}f}"


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def _cell(x: Any, digits: int, tag: str = "td") -> str:
    if _is_number(x) or x is None:
        return f'<{tag} class="num">{html.escape(format_number(x, digits))}</{tag}>'
    try:
        missing = bool(pd.isna(x))
    except (TypeError, ValueError):
        missing = False
    text = "–" if missing else str(x)
    return f"<{tag}>{html.escape(text)}</{tag}>"


def _label(x: Any) -> str:
    if isinstance(x, tuple):
        return " / ".join(str(p) for p in x if str(p) != "")
    return str(x)


def table_to_html(table: Table) -> str:
    """The HTML ``<table>`` of a :class:`Table` item (with its caption)."""
    df = table.data
    show_index = table.index
    if show_index is None:
        show_index = not (isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
                          and df.index.name is None)
    head = []
    if show_index:
        names = [n for n in df.index.names]
        head += [f"<th>{html.escape('' if n is None else str(n))}</th>" for n in names]
    head += [f"<th>{html.escape(_label(c))}</th>" for c in df.columns]
    rows = []
    for key, row in zip(df.index, df.itertuples(index=False, name=None)):
        cells = []
        if show_index:
            keys = key if isinstance(key, tuple) else (key,)
            cells += [_cell(k, table.digits, "th") for k in keys]
        cells += [_cell(v, table.digits) for v in row]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    caption = f"<caption>{_inline(table.caption)}</caption>" if table.caption else ""
    return (f'<div class="table-wrap"><table>{caption}<thead><tr>{"".join(head)}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


# ------------------------------------------------------------------------------------------- figures
def _png_bytes(image: Any) -> bytes:
    if hasattr(image, "savefig"):  # a matplotlib figure
        buffer = io.BytesIO()
        image.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        data = buffer.getvalue()
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"figure image not found: {path}")
        data = path.read_bytes()
    else:
        raise TypeError(f"Figure.image must be PNG bytes, a PNG path or a matplotlib figure, got {type(image).__name__}")
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("Figure.image is not a PNG (missing PNG signature)")
    return data


def figure_to_html(figure: Figure) -> str:
    """The ``<figure>`` of a :class:`Figure` item: the PNG as a base64 data URI, and its caption."""
    encoded = base64.b64encode(_png_bytes(figure.image)).decode("ascii")
    alt = figure.alt if figure.alt is not None else (figure.caption or "figure")
    caption = f"<figcaption>{_inline(figure.caption)}</figcaption>" if figure.caption else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">{caption}</figure>'


# -------------------------------------------------------------------------------------------- page
_CSS = """
:root { --fg: #1d232b; --muted: #5b6673; --line: #d9dee4; --band: #f4f6f8; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 8px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.6em; }
h2 { font-size: 1.3em; margin: 1.6em 0 0.5em; padding-bottom: 0.2em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.1em; margin: 1.2em 0 0.4em; }
a { color: var(--accent); }
code { font: 0.92em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--band);
       padding: 0 0.25em; border-radius: 3px; }
nav.toc { background: var(--band); border: 1px solid var(--line); border-radius: 6px; padding: 8px 18px;
          margin-bottom: 1em; display: inline-block; min-width: 18em; }
nav.toc ol { margin: 0.2em 0; padding-left: 1.4em; } nav.toc .sub { margin-left: 1.2em; list-style: circle; }
.table-wrap { overflow-x: auto; margin: 0.8em 0; }
table { border-collapse: collapse; font-size: 0.92em; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: 0.3em; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid var(--fg); }
td.num, th.num { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--band); }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption, .caption { color: var(--muted); font-size: 0.92em; margin-top: 0.3em; }
.geometry-block { margin: 1em 0; }
footer { max-width: 1240px; margin: 2em auto 0; padding: 12px 28px 24px; color: var(--muted);
         font-size: 0.85em; border-top: 1px solid var(--line); }
"""

# Defence in depth for "no network access": the page needs inline scripts and styles, data: images and
# (plotly.js) eval and blob: workers/images; everything else, including every http(s) request, is refused.
_CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
        "img-src data: blob:; font-src data:; worker-src blob:; connect-src 'none'; base-uri 'none'; form-action 'none'")


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    # A literal "</script" inside would end the inline script early; "<\/" means the same in JS strings.
    return js.replace("</script", "<\\/script")


def _version() -> str:
    from sphere_rl import __version__

    return __version__


def render_report(*, title: str, sections: Sequence[Item], generated: _dt.datetime | None = None) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    generated = generated or _dt.datetime.now(_dt.timezone.utc)
    taken: set[str] = {"top", "contents"}
    toc: list[tuple[int, str, str]] = []
    body: list[str] = []
    n_geometry = 0
    for item in sections:
        if isinstance(item, Heading):
            slug = _slug(item.text, taken)
            toc.append((item.level, slug, item.text))
            body.append(f'<h{item.level} id="{slug}">{html.escape(item.text)}</h{item.level}>')
        elif isinstance(item, Text):
            body.append(text_to_html(item.text))
        elif isinstance(item, Table):
            body.append(table_to_html(item))
        elif isinstance(item, Figure):
            body.append(figure_to_html(item))
        elif isinstance(item, Geometry):
            n_geometry += 1
            div_id = item.div_id or (DEFAULT_DIV_ID if n_geometry == 1 else f"{DEFAULT_DIV_ID}-{n_geometry}")
            if div_id in taken:
                raise ValueError(f"duplicate element id {div_id!r} in the report")
            taken.add(div_id)
            text = READING_GUIDE if item.caption is None else item.caption
            caption = f'<p class="caption">{_inline(text)}</p>' if text else ""
            body.append(f'<div class="geometry-block">{geometry_html(item.runs, div_id=div_id, **item.options)}'
                        f"{caption}</div>")
        else:
            raise TypeError(f"unknown report item {type(item).__name__}: expected one of Heading, Text, Table, "
                            "Figure, Geometry")
    head_script = f'<script type="text/javascript">{_plotly_js()}</script>\n' if n_geometry else ""
    nav = ""
    if toc:
        entries = "".join(f'<li{" class=sub" if level == 3 else ""}><a href="#{slug}">{html.escape(text)}</a></li>'
                          for level, slug, text in toc)
        nav = f'<nav class="toc" id="contents" aria-label="Contents"><strong>Contents</strong><ol>{entries}</ol></nav>'
    stamp = generated.strftime("%Y-%m-%d %H:%M %Z").strip()
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n{head_script}</head>\n<body>\n"
        f'<main id="top">\n<h1>{html.escape(title)}</h1>\n{nav}\n' + "\n".join(body) + "\n</main>\n"
        f'<footer>Generated {html.escape(stamp)} by sphere-rl {html.escape(_version())}. '
        "Self-contained: this file makes no network requests.</footer>\n</body>\n</html>\n"
    )


def write_report(path: str | Path, *, title: str, sections: Sequence[Item],
                 generated: _dt.datetime | None = None) -> Path:
    """Write the report to ``path`` atomically (one self-contained HTML file) and return the path.

    ``generated`` (default: now, UTC) is the time printed in the footer beside the sphere-rl version.
    """
    return atomic_write_text(path, render_report(title=title, sections=sections, generated=generated))
