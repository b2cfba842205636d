"""A tiny document model (sections of paragraphs, tables and images) rendered to self-contained
HTML and to Markdown. All text is treated as untrusted: HTML-escaped, Markdown-escaped."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1080px;
padding:1.5rem 2rem 4rem;color:#1f2328;line-height:1.45}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
h3{margin-top:1.4rem;font-size:1.05rem}
.meta{color:#57606a;font-size:.9rem}.note{background:#fff8c5;border:1px solid #d4a72c;padding:.5rem .8rem;
border-radius:6px}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #d0d7de;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;color:#57606a;font-size:.85rem;padding-bottom:.2rem}
img{max-width:100%;height:auto;border:1px solid #eaeef2;border-radius:4px;margin:.4rem 0}
nav ul{columns:2;font-size:.9rem}pre.text{white-space:pre-wrap;font-family:inherit;margin:0}
"""
_NUMERIC = re.compile(r"^[-+]?[\d.,]+(%| \[.*\].*| \(n=\d+\))?$")


@dataclass
class Paragraph:
    text: str
    note: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    name: str
    alt: str


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)
    level: int = 2


@dataclass
class Document:
    title: str
    meta: list[str]
    sections: list[Section]


def to_html(doc: Document, images: dict[str, bytes]) -> str:
    """One self-contained page: inline CSS, images as base64 PNG data, every text escaped."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
           "style-src 'unsafe-inline'\">",
           f"<title>{esc(doc.title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{esc(doc.title)}</h1>"]
    out += [f'<p class="meta">{esc(line)}</p>' for line in doc.meta]
    out.append("<nav><ul>" + "".join(f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a></li>'
                                     for s in doc.sections if s.level == 2) + "</ul></nav>")
    for section in doc.sections:
        tag = f"h{section.level}"
        out.append(f'<section id="{esc(section.id)}"><{tag}>{esc(section.title)}</{tag}>')
        for block in section.blocks:
            if isinstance(block, Paragraph):
                out.append(f'<p class="note">{esc(block.text)}</p>' if block.note else f"<p>{esc(block.text)}</p>")
            elif isinstance(block, Table):
                out.append(_html_table(block))
            elif isinstance(block, Image) and block.name in images:
                data = base64.b64encode(images[block.name]).decode("ascii")
                out.append(f'<img alt="{esc(block.alt)}" src="data:image/png;base64,{data}">')
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def _html_table(table: Table) -> str:
    esc = html.escape
    parts = ["<table>"]
    if table.caption:
        parts.append(f"<caption>{esc(table.caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.header) + "</tr></thead><tbody>")
    for row in table.rows:
        cells = []
        for cell in row:
            text = str(cell)
            if "\n" in text:
                cells.append(f'<td><pre class="text">{esc(text)}</pre></td>')
            else:
                cells.append(f'<td class="num">{esc(text)}</td>' if _NUMERIC.match(text) else f"<td>{esc(text)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]#!|~])")


def md_escape(text: object) -> str:
    """Inert Markdown: HTML entities for ``<>&`` (no raw HTML, no autolinks), backslashes before the
    punctuation that makes emphasis, code, links, images, headings and table cells; one line.

    >>> md_escape("<b>*hi*</b> | x")
    '&lt;b&gt;\\\\*hi\\\\*&lt;/b&gt; \\\\| x'
    """
    text = html.escape(str(text), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return " ".join(text.split())


def to_markdown(doc: Document, image_dir: str = "charts") -> str:
    """Markdown with images as relative links to ``image_dir/<name>.png``."""
    out = [f"# {md_escape(doc.title)}", ""]
    out += [f"_{md_escape(line)}_  " for line in doc.meta]
    out.append("")
    for section in doc.sections:
        out += [f"{'#' * section.level} {md_escape(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                out += [("> " if block.note else "") + md_escape(block.text), ""]
            elif isinstance(block, Table):
                if block.caption:
                    out += [f"*{md_escape(block.caption)}*", ""]
                out.append("| " + " | ".join(md_escape(h) for h in block.header) + " |")
                out.append("|" + "|".join("---" for _ in block.header) + "|")
                out += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in block.rows]
                out.append("")
            elif isinstance(block, Image):
                out += [f"![{md_escape(block.alt)}]({image_dir}/{block.name}.png)", ""]
    return "\n".join(out).rstrip() + "\n"
