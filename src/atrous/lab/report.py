"""One report from the exercise sections: report.md (PNGs beside it), self-contained report.html, results.json.

Sections hold only what the run produced: tables of computed values, figures drawn from them, and sentences
whose every number is formatted from the data.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atrous.fileio import write_atomic


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Section:
    key: str  # "ex1" ... "ex5": also the results.json key
    title: str
    command: str  # the command that reruns this section alone
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name in the run dir, caption)
    results: dict[str, Any] = field(default_factory=dict)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v) or "-"
    return str(v)


def markdown(sections: list[Section], header: str) -> str:
    out = [f"# atrous lab report\n\n{header}\n"]
    for s in sections:
        out.append(f"## {s.title}\n\nRerun alone: `{s.command}`\n")
        out += [p + "\n" for p in s.paragraphs]
        for t in s.tables:
            if t.caption:
                out.append(f"*{t.caption}*\n")
            out.append("| " + " | ".join(t.columns) + " |")
            out.append("|" + "---|" * len(t.columns))
            out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in t.rows]
            out.append("")
        out += [f"![{cap}]({name})\n\n*{cap}*\n" for name, cap in s.figures]
    return "\n".join(out)


def html_page(sections: list[Section], header: str, run_dir: Path) -> str:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}code{background:#f3f3f3;padding:1px 4px}"
        "img{max-width:100%}figcaption{font-style:italic;color:#555}"
    )
    body = [f"<h1>atrous lab report</h1><p>{html.escape(header)}</p>"]
    for s in sections:
        body.append(
            f"<h2>{html.escape(s.title)}</h2><p>Rerun alone: <code>{html.escape(s.command)}</code></p>"
        )
        body += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        for t in s.tables:
            cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
            head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>" for r in t.rows
            )
            body.append(f"<table>{cap}<tr>{head}</tr>{rows}</table>")
        for name, cap in s.figures:
            data = base64.b64encode((run_dir / name).read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(cap)}">'
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
    head = f"<meta charset='utf-8'><title>atrous lab</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>"


def write_report(
    sections: list[Section], run_dir: Path, header: str, meta: dict[str, Any]
) -> dict[str, Path]:
    results = {s.key: s.results for s in sections}
    results["meta"] = meta
    paths = {"json": run_dir / "results.json", "md": run_dir / "report.md", "html": run_dir / "report.html"}
    write_atomic(paths["json"], json.dumps(results, indent=2, sort_keys=True, allow_nan=False) + "\n")
    write_atomic(paths["md"], markdown(sections, header))
    write_atomic(paths["html"], html_page(sections, header, run_dir))
    return paths
