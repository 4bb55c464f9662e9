"""The record folder of each track, as its repository lays records out (read from the public repositories'
records/ folders; docs/records.md):

- modded-nanogpt (records/track_1_short/DATE_NAME/): README.md with the n / steps / mean val_loss / std / p / mean
  train_time table, this_pr/ and baseline/ with one log per run and a statistics.md each;
- parameter-golf (records/track_10min_16mb/DATE_NAME/): README.md, submission.json (per-seed results),
  train_gpt.py, train_seedN.log per run;
- nanochat (a leaderboard row and a `## Run N` entry of dev/LEADERBOARD.md): README.md with the row and the run's
  launch command and result block, logs/, statistics.md.

Every folder also gets the diff of the change against the baseline, the rule checks (in the README) and
SHA256SUMS over every other file. Nothing is written while a rule is broken, unless `draft` (the README then
says why it is not a record)."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable

import jinja2

from db import Database, StudyRow

from ..config.errors import OrchError
from ..export.change import container_command
from .build import RecordData, RecordProblem, gather, variant_label
from .logs import run_log

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("orchestrator.record", "templates"), keep_trailing_newline=True,
                          trim_blocks=False, undefined=jinja2.StrictUndefined)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):.{digits}f}"


def _context(data: RecordData, rebuilt: bool) -> dict[str, Any]:
    cert = data.certification
    base_p = None
    if data.baseline is not None and cert.test is not None and len(data.baseline.values(data.record.metric)) >= 2:
        from ..certify.sequential import one_sided_p

        base_p = one_sided_p(data.baseline.values(data.record.metric), cert.test.null_value, cert.test.below)
    return {"d": data, "cert": cert, "num": _num, "fmt": lambda x: f"{x:.4g}", "mean": statistics.fmean,
            "stdev": statistics.stdev, "median": statistics.median, "rebuilt": rebuilt, "base_p": base_p,
            "null": f"{cert.test.null_value:g}" if cert.test else "-",
            "label": variant_label(data.spec, cert.params), "best": data.settings.get("best_score"),
            "container": container_command(data.container, data.command)}


def _statistics(data: RecordData, runs, title: str, summary: str) -> str:
    test = data.certification.test
    below = test.below if test else True
    null = test.null_value if test else 0.0
    p = None
    if len(runs.values(runs.metric)) >= 2:
        from ..certify.sequential import one_sided_p

        p = one_sided_p(runs.values(runs.metric), null, below)
    return _ENV.get_template("statistics.md.j2").render(
        d=data, runs=runs, title=title, summary=summary, p=p, null=f"{null:g}", num=_num, mean=statistics.fmean,
        stdev=statistics.stdev, median=statistics.median, null_text=f"{null:g}",
        alternative="less" if below else "greater", test_used=test.test if test else "n/a")


def _logs(db: Database, study: StudyRow, records: list[dict[str, Any]], name: Callable[[dict], str],
          files: dict[str, str]) -> bool:
    rebuilt = False
    for r in records:
        text, was_rebuilt = run_log(db, study, r)
        files[name(r)] = text
        rebuilt |= was_rebuilt
    return rebuilt


def _modded_nanogpt(db: Database, study: StudyRow, data: RecordData, files: dict[str, str]) -> bool:
    rebuilt = _logs(db, study, data.record.records, lambda r: f"this_pr/trial-{r['number']:04d}.txt", files)
    files["this_pr/statistics.md"] = _statistics(data, data.record, f"{data.name} statistics",
                                                 f"Every confirmation run of {variant_label(data.spec, data.certification.params)}.")
    if data.baseline is not None:
        rebuilt |= _logs(db, study, data.baseline.records, lambda r: f"baseline/trial-{r['number']:04d}.txt", files)
        files["baseline/statistics.md"] = _statistics(data, data.baseline, "Baseline statistics",
                                                      f"Baseline: {data.baseline_how}.")
    return rebuilt


def _seed(record: dict[str, Any]) -> int:
    return int(record["number"])  # the study's {seed} is the trial number (jobs.build_job)


def _script(data: RecordData) -> str | None:
    """The training script the counted runs ran: the injected copy in a run's working directory."""
    for r in data.record.records:
        workdir = r.get("workdir")
        if workdir and Path(workdir).is_dir():
            scripts = sorted(Path(workdir).glob("*.py"))
            if scripts:
                return scripts[0].read_text(encoding="utf-8", errors="replace")
    return None


def _parameter_golf(db: Database, study: StudyRow, data: RecordData, files: dict[str, str]) -> bool:
    rebuilt = _logs(db, study, data.record.records, lambda r: f"train_seed{_seed(r)}.log", files)
    script = _script(data)
    if script is None:
        data.problems.append("train_gpt.py (a required file of a parameter-golf record) is not on this machine: no "
                             "counted run's working directory holds the script it ran")
    else:
        files["train_gpt.py"] = script
    runs = data.record

    def per_seed(r: dict[str, Any]) -> dict[str, Any]:
        keys = {"val_loss": "metrics.val_loss", "val_bpb": "metrics.val_bpb", "artifact_bytes": "metrics.artifact_bytes",
                "steps": "metrics.steps", "step_avg_ms": "metrics.step_avg_ms", "eval_time_s": "metrics.eval_time_s"}
        out = {k: r.get(v) for k, v in keys.items() if r.get(v) is not None}
        for k in ("artifact_bytes", "steps"):
            if k in out:
                out[k] = int(out[k])
        return out

    def stat(key, fn):
        value = runs.stat(key, fn)
        return round(value, 8) if value is not None else None

    artifacts = runs.values("artifact_bytes")
    submission = {
        "author": data.author, "github_id": data.github_id, "name": data.name,
        "blurb": f"{variant_label(data.spec, data.certification.params)}; {len(runs.records)}-seed mean, "
                 f"certified by `orch record` ({data.certification.test.explanation if data.certification.test else 'no test'})",
        "date": data.date, "track": "10min_16mb",
        "val_loss": stat("val_loss", statistics.fmean), "val_bpb": stat("val_bpb", statistics.fmean),
        "val_loss_std": stat("val_loss", statistics.stdev), "val_bpb_std": stat("val_bpb", statistics.stdev),
        "seeds": [_seed(r) for r in runs.records],
        "seed_results": {str(_seed(r)): per_seed(r) for r in runs.records},
        "artifact_bytes_mean": round(statistics.fmean(artifacts)) if artifacts else None,
        "artifact_bytes_max": int(max(artifacts)) if artifacts else None,
        "bytes_total": int(max(artifacts)) if artifacts else None,
        "hardware": data.hardware, "pytorch_version": data.versions.get("torch"),
        "cuda_version": data.versions.get("cuda"),
        "p_value": data.certification.test.p_value if data.certification.test else None,
    }
    files["submission.json"] = json.dumps(submission, indent=2) + "\n"
    return rebuilt


def _nanochat(db: Database, study: StudyRow, data: RecordData, files: dict[str, str]) -> bool:
    rebuilt = _logs(db, study, data.record.records, lambda r: f"logs/trial-{r['number']:04d}.txt", files)
    files["statistics.md"] = _statistics(data, data.record, f"{data.name} statistics",
                                         f"Every confirmation run of {variant_label(data.spec, data.certification.params)}.")
    return rebuilt


LAYOUTS = {"modded-nanogpt": ("modded_nanogpt_README.md.j2", _modded_nanogpt),
           "parameter-golf": ("parameter_golf_README.md.j2", _parameter_golf),
           "nanochat": ("nanochat_README.md.j2", _nanochat)}


def record_files(db: Database, study: StudyRow, data: RecordData) -> dict[str, str]:
    """Every file of the folder (relative path -> text), SHA256SUMS last."""
    template, fill = LAYOUTS[data.track]
    files: dict[str, str] = {}
    rebuilt = fill(db, study, data, files)
    files[data.diff_name] = data.diff or "(no difference in the training command)\n"
    files["README.md"] = _ENV.get_template(template).render(**_context(data, rebuilt))
    files["SHA256SUMS"] = "".join(f"{hashlib.sha256(text.encode()).hexdigest()}  {path}\n"
                                  for path, text in sorted(files.items()))
    return files


def write_record(db: Database, study: StudyRow, track: str, out: Path, *, variant: str | None = None,
                 best_score: float | None = None, name: str | None = None, author: str = "", github_id: str = "",
                 draft: bool = False) -> tuple[RecordData, list[str]]:
    """Check the evidence and write the folder; RecordProblem (nothing written) when a rule is broken, unless
    `draft`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OrchError(f"--out {out}: exists and is not an empty folder (fix: name a new folder)")
    data = gather(db, study, track, variant=variant, best_score=best_score, name=name, author=author,
                  github_id=github_id)
    files = record_files(db, study, data)
    if data.problems and not draft:
        runs = ", ".join(str(n) for n in data.certification.numbers)
        raise RecordProblem(f"{track} record of study {study.name!r} (runs {runs}): " + "; ".join(data.problems)
                            + " (fix: add confirmation runs with `orch study confirm`, or pass --draft to write the "
                            "folder marked as not a record)")
    for path, text in files.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return data, sorted(files)

