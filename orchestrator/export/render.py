"""What `orch export` writes, by format: `RENDERERS` (md and html are the write-up, csv and json every recorded field
of every trial) and `export_text`, which adds the markdown's PNG plots beside `--out`. The plots (matplotlib) are
imported when a format needs them."""

from __future__ import annotations

from pathlib import Path

from db import Database, StudyRow

from .records import csv_text, json_text
from .report import build_report, markdown_report, render_markdown


def html_report(db: Database, study: StudyRow) -> str:
    """RENDERERS['html']: one self-contained HTML file, plots inline."""
    from .html import render_html
    from .plots import render_plots  # matplotlib: only for the formats with plots

    report = build_report(db, study)
    return render_html(report, render_plots(report))


def export_text(fmt: str, db: Database, study: StudyRow, out: Path | None = None, plots: bool | None = None) -> str:
    """What `orch export` writes. Markdown with plots writes PNG files beside `out` and links them."""
    if fmt == "html":
        from .html import render_html
        from .plots import render_plots

        report = build_report(db, study)
        return render_html(report, render_plots(report) if plots is not False else [])
    if fmt == "md" and plots:
        from ..config.errors import OrchError
        from .plots import render_plots

        if out is None:
            raise OrchError("markdown plots are PNG files written beside the .md (fix: add --out FILE.md, "
                            "or drop --plots)")
        report = build_report(db, study)
        links = []
        out.parent.mkdir(parents=True, exist_ok=True)
        for plot in render_plots(report):
            path = out.parent / f"{out.stem}.{plot.name}.png"
            path.write_bytes(plot.png)
            links.append((path.name, plot.caption))
        return render_markdown(report, links)
    return RENDERERS[fmt](db, study)


RENDERERS = {"md": markdown_report, "html": html_report, "csv": csv_text, "json": json_text}
