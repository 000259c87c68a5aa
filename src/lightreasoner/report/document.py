"""The report's document model: blocks appended in order, rendered to Markdown and to self-contained HTML.

:class:`Doc` knows headings, paragraphs, notes (the one-line stand-in of a section whose inputs are absent),
bullet lists, tables, preformatted text and figures. Figures are PNG files under the report folder: the Markdown
links them relative to ``report.md``, the HTML embeds them (base64), so ``report.html`` needs no other file.
The number formats the tables share (durations, counts, signed changes, intervals, p-values) live here too.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;"
         "line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0}"
         "th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f3f3f3}"
         "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}"
         "img{max-width:100%}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"
         ".note{color:#777;font-style:italic}code{background:#f3f3f3;padding:0 .2em}")


def _inline_html(text: str) -> str:
    """Escape, then render the Markdown we use inline: `code` and **bold**."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


@dataclass
class Doc:
    """Blocks appended in order; :meth:`markdown` and :meth:`html` render the same content.

    ``root``: the folder ``report.md`` is written to (figure links are relative to it)."""

    root: Path
    md: list[str] = field(default_factory=list)
    html_parts: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.md.append("#" * level + " " + text)
        self.html_parts.append(f"<h{level}>{_inline_html(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text)
        self.html_parts.append(f"<p>{_inline_html(text)}</p>")

    def note(self, text: str) -> None:
        self.md.append(f"_{text}_")
        self.html_parts.append(f'<p class="note">{_inline_html(text)}</p>')

    def bullets(self, items: Sequence[str]) -> None:
        self.md.append("\n".join(f"- {i}" for i in items))
        self.html_parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> None:
        """A table; ``right``: right-aligned columns (default: all but the first)."""
        right = list(right) if right is not None else [i > 0 for i in range(len(header))]
        lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
                 "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
        self.md.append("\n".join(lines))
        align = [' style="text-align:right"' if r else "" for r in right]
        head = "".join(f"<th{a}>{_inline_html(str(h))}</th>" for h, a in zip(header, align))
        body = "".join("<tr>" + "".join(f"<td{a}>{_inline_html(str(c))}</td>" for c, a in zip(row, align)) + "</tr>"
                       for row in rows)
        self.html_parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def pre(self, text: str) -> None:
        fence = _fence(text)
        self.md.append(f"{fence}text\n{text}\n{fence}")
        self.html_parts.append(f"<pre>{html.escape(text)}</pre>")

    def figure(self, path: Path, caption: str) -> None:
        """A PNG under :attr:`root`: linked from the Markdown, inline in the HTML."""
        rel = path.relative_to(self.root).as_posix()
        self.md.append(f"![{caption}]({rel})\n\n{caption}")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html_parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                               f"<figcaption>{_inline_html(caption)}</figcaption></figure>")
        self.figures.append(path)

    def markdown(self) -> str:
        return "\n\n".join(self.md) + "\n"

    def html(self, title: str) -> str:
        return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{STYLE}</style></head><body>\n" + "\n".join(self.html_parts) + "\n</body></html>\n")


# ---------------------------------------------------------------------------------------------------------------
# Number formats ("-" stands for unknown everywhere)


def fmt_duration(seconds: float | None) -> str:
    """``42.0 s``, ``12.5 min`` or ``3.20 h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 100:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def fmt_int(v: Any) -> str:
    return "-" if v is None else f"{int(v):,}"


def fmt_signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1f}"


def fmt_ci(row: dict) -> str:
    """A comparison row's ``delta_ci95`` as ``lo .. hi`` (points)."""
    ci = row.get("delta_ci95")
    return "-" if not ci else f"{ci[0]:+.1f} .. {ci[1]:+.1f}"


def fmt_p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def shorten(text: str | None, n: int) -> str:
    """``text`` cut to ``n`` characters, `` [...]`` marking a cut."""
    text = text or ""
    return text if len(text) <= n else text[:n] + " [...]"
