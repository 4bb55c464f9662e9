"""The write-up as ONE self-contained HTML file: inline CSS, plots as base64 PNG data URIs, no script,
nothing fetched from the network."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from . import record_page
from .report import (Report, duty_table, early_exit_summary, headline, reproduction, run_table, variant_table)
from .tables import HIT, MISS

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-alt: #f6f8fa; --hit: #1a7f37; --miss: #cf222e;
        --accent: #0969da; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; color: var(--fg);
       margin: 0; background: #fff; line-height: 1.5; font-size: 15px; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 6px 0 10px; }
.meta { color: var(--muted); margin-bottom: 12px; }
.headline { border: 1px solid var(--line); border-left: 5px solid var(--accent); border-radius: 6px;
            padding: 14px 18px; background: var(--bg-alt); }
.headline .title { font-size: 18px; font-weight: 600; margin-bottom: 8px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; }
td.hit { color: var(--hit); font-weight: 700; text-align: center; }
td.miss { color: var(--miss); font-weight: 700; text-align: center; }
.headline table { background: #fff; }
.conclusion { color: var(--fg); background: #f0f6ff; border-radius: 4px; padding: 6px 10px; margin: 4px 0 14px;
              font-size: 14px; }
.conclusion p { margin: 2px 0; }
pre { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      overflow-x: auto; font-size: 12.5px; white-space: pre-wrap; word-break: break-all; }
code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.muted { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""


def _is_num(text: str) -> bool:
    try:
        float(text.replace("−", "-").replace(" ", "").split("±")[0].split("(")[0])
        return True
    except ValueError:
        return False


def _table(cols: list[str], rows: list[list[str]], *, cls: str = "", table_id: str | None = None) -> str:
    attrs = (f' id="{escape(table_id)}"' if table_id else "") + (f' class="{cls}"' if cls else "")
    head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
    body = []
    for row in rows:
        cells = []
        for c in row:
            text = str(c)
            klass = "hit" if text == HIT else "miss" if text == MISS else "num" if text and _is_num(text) else ""
            cells.append(f'<td class="{klass}">{escape(text)}</td>' if klass else f"<td>{escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(report: Report, plots: list[Any]) -> str:
    spec = report.spec
    done = [r for r in report.records if r["state"] == "complete"]
    parts = [f"<h1>Study <code>{escape(report.name)}</code></h1>"]
    if spec.description:
        parts.append(f"<p>{escape(spec.description.strip())}</p>")
    parts.append(f'<p class="meta">Objective: {escape(spec.objective.direction)} <code>{escape(report.metric)}</code> '
                 f"subject to {escape(report.target_text())}. Sampler: {escape(spec.sampler.name)}. "
                 f"Trials: {len(report.records)} in {len(report.rounds)} rounds ({len(done)} complete, "
                 f"{sum(1 for r in done if r['feasible'])} met the target).</p>")
    head = headline(report)
    box = [f'<div class="title">{escape(head["title"])}</div>']
    if head["rows"]:
        box.append(_table(["", *head["columns"]], head["rows"], table_id="headline"))
    box += [f"<p>{escape(s)}</p>" for s in head["sentences"]]
    parts.append('<h2 id="headline-section">Headline</h2><section class="headline">' + "".join(box) + "</section>")
    if report.page is not None:
        parts.append(record_page.render("html", report, report.page, "lead"))
    if report.variants:
        cols, rows = variant_table(report, report.variants)
        parts.append("<h2>Variants</h2><p>Every variant with a complete run (search, baseline and confirmation runs), "
                     f"{'fastest' if spec.objective.direction == 'minimize' else 'best'} mean first.</p>"
                     + _table(cols, rows, table_id="variants"))
    parts.append("<h2>Search progression</h2>")
    for rnd in report.rounds:
        title = f"Round {rnd.number}" if rnd.number else "Recovered (asked before a controller died)"
        cols, rows = run_table(report, rnd.records)
        parts.append(f"<h3>{escape(title)}</h3>" + _table(cols, rows, cls="round", table_id=f"round-{rnd.number}"))
        parts.append('<div class="conclusion"><p><strong>After round ' + str(rnd.number) + ":</strong> "
                     + escape(rnd.conclusion[0]) + "</p>" + "".join(f"<p>{escape(x)}</p>" for x in rnd.conclusion[1:])
                     + "</div>")
    if report.confirmation:
        cols, rows = variant_table(report, report.confirmation_variants)
        parts.append("<h2>Confirmation runs</h2>" + _table(cols, rows, table_id="confirmation-variants"))
        cols, rows = run_table(report, report.confirmation)
        parts.append(_table(cols, rows, table_id="confirmation"))
    if report.page is not None:
        parts.append(record_page.render("html", report, report.page, "evidence"))
    if report.early_exit:
        extra = ["steps"] if any(r.get("metrics.steps") is not None for r in report.early_exit) else []
        cols, rows = run_table(report, report.early_exit, extra=extra)
        parts.append("<h2>Early-exit analysis</h2>" + "".join(f"<p>{escape(s)}</p>" for s in early_exit_summary(report))
                     + _table(cols, rows, table_id="early-exit"))
    rep = reproduction(report)
    duty_sentences, duty_cols, duty_rows = duty_table(report)
    if duty_rows:
        parts.append("<h2>Duty cycle</h2><p>" + escape(" ".join(duty_sentences)) + "</p>"
                     + _table(duty_cols, duty_rows, table_id="duty-cycle"))
    parts.append("<h2>Reproduction</h2>")
    if rep["run"] is None:
        parts.append("<p>No complete run to reproduce.</p>")
    else:
        parts.append(f"<p>Best run: {escape(rep['run'])}.</p>")
        parts.append(_table(["field", "value"], [[k, v if v not in (None, "") else "not recorded"] for k, v in rep["fields"]],
                            table_id="reproduction"))
        parts.append(_table(["library", "version"], [[k, str(v)] for k, v in rep["versions"]], table_id="versions")
                     if rep["versions"] else '<p class="muted">Library versions: not recorded.</p>')
        parts.append(_table(["file", "md5"], [[k, str(v)] for k, v in rep["checksums"]], table_id="checksums")
                     if rep["checksums"] else '<p class="muted">File checksums: not recorded.</p>')
        parts.append(f"<p>Command of the best run:</p><pre><code>{escape(rep['command'])}</code></pre>" if rep["command"]
                     else '<p class="muted">Command of the best run: not recorded.</p>')
        parts.append(f"<p>In the container image the runs used:</p><pre><code>{escape(rep['container'])}</code></pre>"
                     if rep["container"] else '<p class="muted">No container image was recorded: run the command in a '
                     "checkout of the code revision above.</p>")
    if rep["across"]:
        parts.append("<p>Across all trials:</p>" + _table(["field", "values (trials)"], [list(x) for x in rep["across"]]))
    if plots:
        parts.append("<h2>Plots</h2>")
        for plot in plots:
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(f'<figure><img alt="{escape(plot.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{escape(plot.caption)}</figcaption></figure>")
    for note in report.notes:
        parts.append(f'<p class="muted">{escape(note)}</p>')
    parts.append(f"<footer>Generated by <code>orch export</code> from the data as of {escape(report.generated_at)}.</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(report.name)}: study write-up</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            + "\n".join(parts) + "\n</main>\n</body>\n</html>\n")
