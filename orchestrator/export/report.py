"""The record write-up of a study (`orch export NAME --format md|html`), modelled on the 2026-03-15
stage-shift record page: headline, variants, search progression (a table per round and what the sampler
concluded after it), confirmation runs, early-exit analysis, reproduction, plots.

`build_report` gathers everything from the database (our rows and the Optuna study) into a `Report`;
`render_markdown` (here) and `html.render_html` turn it into text; `plots.render_plots` draws the figures.
docs/export.md describes the sections and the conventions (kinds of trials, baseline, best variant).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from db import Database, StudyRow

from ..analysis.duty_cycle import study_duty_cycle
from ..analysis.pick import pick_text, study_pick
from ..analysis.results import (STATS_KINDS, Variant, full_records, json_field, optuna_trials, top_variants,
                                variants_of)
from ..config.study import Constraint, StudySpec
from ..certify.summary import study_evidence
from . import record_page
from .change import container_command, portable_command
from .tables import HIT, MISS, _fmt, _note, best_trial, md_table

ROUND_KINDS = ("search", "baseline")  # runs shown in the round tables


@dataclass
class Round:
    number: int
    records: list[dict[str, Any]]
    conclusion: list[str]
    estimate: Any = None  # the pick rule's Recommendation after this round


@dataclass
class Report:
    name: str
    spec: StudySpec
    records: list[dict[str, Any]]
    names: list[str]  # parameters + derived, the table columns
    searched: list[str]  # the study's parameters (plotted)
    constraint: Constraint | None
    rounds: list[Round]
    variants: list[Variant]
    best: Variant | None
    baseline: Variant | None
    baseline_how: str
    fastest_hit: dict[str, Any] | None
    best_run: dict[str, Any] | None
    confirmation: list[dict[str, Any]]
    confirmation_variants: list[Variant]
    early_exit: list[dict[str, Any]]
    has_experiment: bool
    generated_at: str
    pick: Any = None  # the pick rule's Recommendation over every counted run
    notes: list[str] = field(default_factory=list)
    page: Any = None  # record_page.Sections: certification, saving, stage costs, the change, paired timing, step cut
    duty: Any = None  # analysis.duty_cycle.DutyCycle: timed training / machine time, per machine

    @property
    def metric(self) -> str:
        return self.spec.objective.metric

    @property
    def cmetric(self) -> str | None:
        return self.constraint.metric if self.constraint else None

    @property
    def constraint_metrics(self) -> list[str]:
        return [c.metric for c in self.spec.objective.constraints]

    def variant_label(self, params: dict[str, Any]) -> str:
        return " / ".join(_fmt(params.get(n)) for n in self.names)

    def target_text(self) -> str:
        return ", ".join(str(c) for c in self.spec.objective.constraints) or "none"


# ------------------------------------------------------------------------------------------------ building
def _hit(record: dict[str, Any]) -> bool:
    return record["state"] == "complete" and bool(record["feasible"])


def mark(record: dict[str, Any]) -> str:
    if record["state"] != "complete":
        return ""
    return HIT if record["feasible"] else MISS


def note_text(record: dict[str, Any]) -> str:
    parts = [record.get("note") or ""]
    extra = _note(record)
    if extra and extra not in parts[0]:
        parts.append(extra)
    if record["state"] != "complete" and record["state"] not in " ".join(parts):
        parts.append(record["state"])
    return "; ".join(p for p in parts if p)


def _best_feasible_text(report_spec: StudySpec, records: list[dict[str, Any]], names: list[str],
                        constraint: Constraint | None, has_experiment: bool) -> list[str]:
    done = [r for r in records if r["state"] == "complete"]
    hits = [r for r in done if r["feasible"]]
    best = best_trial(report_spec, done)
    lines = []
    if best is None:
        lines.append(f"No run has met the target yet ({len(done)} complete so far).")
    else:
        what = f"trial {best['number']}" + (f" (experiment {best['user_attrs.experiment']})"
                                              if has_experiment and best.get("user_attrs.experiment") is not None else "")
        cm = f", {constraint.metric} = {_fmt(best.get('metrics.' + constraint.metric))}" if constraint else ""
        lines.append(f"Best feasible so far: {what}, round {best['round']}, {report_spec.objective.metric} = "
                     f"{_fmt(best['value'])}{cm}; " + ", ".join(f"{n} = {_fmt(best.get('params.' + n))}" for n in names)
                     + f". Hits so far: {len(hits)} of {len(done)} runs.")
    return lines


def _variant_of(variants: list[Variant], params: dict[str, float] | None, names: list[str]) -> Variant | None:
    if params is None:
        return None
    for v in variants:
        if all(isinstance(v.params.get(k), (int, float)) and abs(float(v.params[k]) - x) < 1e-9
               for k, x in params.items()):
            return v
    return None


def build_report(db: Database, study: StudyRow) -> Report:
    spec = StudySpec.model_validate(study.spec)
    trials = optuna_trials(db, study)
    records = [r for r in full_records(db, study, trials) if r["state"] != "invalid"]
    names = spec.all_names()
    constraints = spec.objective.constraints
    constraint = constraints[0] if constraints else None
    has_experiment = any(r.get("user_attrs.experiment") is not None for r in records)
    stat_records = [r for r in records if r["kind"] in STATS_KINDS]
    variants = variants_of(spec, stat_records, constraint, names)
    best = next(iter(top_variants(variants, constraint, 1)), None)
    baseline_rec = next((r for r in records if r["kind"] == "baseline" and r["state"] == "complete"), None)
    baseline_how = "the run marked baseline"
    if baseline_rec is None:
        baseline_rec = next((r for r in stat_records if r["state"] == "complete"), None)
        baseline_how = "the first complete run (no run is marked baseline)"
    baseline = next((v for v in variants if baseline_rec is not None and v.key == baseline_rec["variant"]), None)
    fastest_hit = best_trial(spec, stat_records)
    best_run = None
    if best is not None:
        runs = [r for r in stat_records if r["variant"] == best.key and _hit(r)]
        best_run = best_trial(spec, runs)
    best_run = best_run or fastest_hit

    notes: list[str] = []
    pick = study_pick(spec, stat_records)
    if pick is not None:
        picked = _variant_of(variants, pick.params, names)
        best = picked  # the one pick rule (analysis/pick.py): None while no run variant is likely feasible
        if pick.params is not None and picked is None:
            notes.append("The pick rule's variant has no row among the variants; its figures are the model's.")
    rounds = []
    round_records = [r for r in records if r["kind"] in ROUND_KINDS]
    for number in sorted({r["round"] for r in round_records}):
        group = [r for r in round_records if r["round"] == number]
        done = [r for r in group if r["state"] == "complete"]
        head = (f"{len(group)} run{'s' if len(group) != 1 else ''}, {len(done)} complete, "
                f"{sum(1 for r in done if r['feasible'])} met the target.")
        estimate = None
        if pick is not None:
            estimate = study_pick(spec, stat_records, until_round=number)
            conclusion = [head, *pick_text(estimate, constraint.metric, spec.objective.metric)]
        else:
            so_far = [r for r in stat_records if r["round"] <= number]
            conclusion = [head, *_best_feasible_text(spec, so_far, names, constraint, has_experiment)]
        rounds.append(Round(number=number, records=group, conclusion=conclusion, estimate=estimate))
    confirmation = [r for r in records if r["kind"] == "confirmation"]
    conf_variants = variants_of(spec, confirmation, constraint, names)
    early = [r for r in records if r["kind"] == "early_exit"]
    report = Report(name=study.name, spec=spec, records=records, names=names, searched=list(spec.parameters),
                    constraint=constraint, rounds=rounds, variants=variants, best=best, baseline=baseline,
                    baseline_how=baseline_how, fastest_hit=fastest_hit, best_run=best_run, confirmation=confirmation,
                    confirmation_variants=conf_variants, early_exit=early, has_experiment=has_experiment,
                    generated_at=_data_as_of(study, records), pick=pick, notes=notes)
    evidence = study_evidence(db, study, first=best.key if best is not None else None, records=records)
    report.page = record_page.sections(db, study, report, evidence)
    report.duty = study_duty_cycle(db, study.id)
    return report


# ------------------------------------------------------------------------------------------------ shared views
def _pct(diff: float, base: float) -> str:
    return f"{100 * diff / base:+.2f} %" if base else ""


def _signed(x: float) -> str:
    return ("+" if x > 0 else "-" if x < 0 else "±") + _fmt(abs(x))


def headline(report: Report) -> dict[str, Any]:
    """The headline's facts as text cells (shared by markdown and HTML)."""
    out: dict[str, Any] = {"rows": [], "sentences": []}
    b, base, c = report.best, report.baseline, report.constraint
    if b is None:
        pick = report.pick
        out["title"] = "No pick yet: no variant is shown to meet the target on average."
        if pick is not None and pick.reason:
            out["sentences"].append(f"The pick rule: {pick.reason}.")
    else:
        out["title"] = ("Best variant: " + ", ".join(f"{n} = {_fmt(b.params.get(n))}" for n in report.names))
        cols = ["best variant", "baseline", "change"]
        rows = [[" / ".join(report.names), report.variant_label(b.params),
                 report.variant_label(base.params) if base else "", ""]]
        rows.append(["runs (hits)", f"{b.stats.runs} ({b.stats.hits})",
                     f"{base.stats.runs} ({base.stats.hits})" if base else "", ""])
        t_best = _fmt(b.mean) + (f" ± {_fmt(b.std)}" if b.stats.runs > 1 else "")
        t_base = (_fmt(base.mean) + (f" ± {_fmt(base.std)}" if base.stats.runs > 1 else "")) if base else ""
        change = f"{_signed(b.mean - base.mean)} ({_pct(b.mean - base.mean, base.mean)})" if base else ""
        saving = report.page.saving if report.page is not None else None
        if base and saving is not None and saving.interval is not None:
            lo, hi = saving.interval
            change += f"; {int(record_page.LEVEL * 100)}% interval {lo:+.4g} to {hi:+.4g} ({saving.how})"
        rows.append([f"{report.metric} (mean ± std)", t_best, t_base, change])
        if c is not None:
            m_best = _fmt(b.stats.mean_metric) + (f" ± {_fmt(b.stats.std_metric)}" if b.stats.runs > 1 else "")
            m_base = (_fmt(base.stats.mean_metric) + (f" ± {_fmt(base.stats.std_metric)}" if base.stats.runs > 1 else "")) if base else ""
            rows.append([f"{c.metric} (mean ± std)", m_best, m_base,
                         _signed(b.stats.mean_metric - base.stats.mean_metric) if base else ""])
            sense = "<" if c.op == "<=" else ">"
            rows.append([f"p, one-sided t-test {c.metric} {sense} {c.threshold:g}", _p(b.stats.p_value),
                         _p(base.stats.p_value) if base else "", ""])
        hardware = report.page.hardware if report.page is not None else None
        rows.append(["hardware", hardware or "not recorded", "", ""])
        out["columns"], out["rows"] = cols, rows
        best_word = "fastest" if report.spec.objective.direction == "minimize" else "best"
        if report.pick is not None and report.pick.params is not None:
            how = (f"{best_word} run variant whose mean {c.metric} meets {c} with P >= {report.pick.level:g} under one "
                   f"model of all runs (the pick rule, docs/search.md; P = {report.pick.p_feasible:.2f} here)")
        else:
            how = f"{best_word} mean {report.metric} among variants" + (
                f" with a hit rate of at least 50% and a mean {c.metric} that meets {c}" if c else "")
        out["sentences"].append(f"Best variant = the {how}; baseline = {report.baseline_how}; "
                                f"runs backing it: trials {', '.join(str(n) for n in b.numbers)}.")
        if c is not None and not math.isnan(b.stats.p_value):
            verdict = "meets" if b.stats.p_value < 0.01 else "does not meet"
            out["sentences"].append(f"The best variant {verdict} the record rule (p < 0.01 that the mean {c.metric} "
                                    f"is {'below' if c.op == '<=' else 'above'} {c.threshold:g}).")
        elif c is not None:
            out["sentences"].append("One run is not enough for the t-test (p needs at least two runs).")
        out["sentences"] += certification_sentences(report)
    f = report.fastest_hit
    if f is not None:
        exp = f" (experiment {f['user_attrs.experiment']})" if f.get("user_attrs.experiment") is not None else ""
        cm = f", {c.metric} {_fmt(f.get('metrics.' + c.metric))}" if c else ""
        out["sentences"].append(f"Fastest single run that met the target: trial {f['number']}{exp}, round {f['round']}"
                                f"{', ' + f['machine'] if f.get('machine') else ''}: {report.metric} {_fmt(f['value'])}{cm}."
                                if report.spec.objective.direction == "minimize" else
                                f"Best single run that met the target: trial {f['number']}{exp}: {report.metric} {_fmt(f['value'])}{cm}.")
    return out


def certification_sentences(report: Report) -> list[str]:
    """What the track's rule concludes for the headline's variant: from its confirmation runs, or, without them,
    that it is not certified (its search runs picked it, so they are no evidence for it)."""
    page, b = report.page, report.best
    if page is None or b is None:
        return []
    evidence = page.evidence
    if evidence.problem:
        return [f"Certification: cannot judge ({evidence.problem})."]
    if evidence.track is None:
        return []
    cert = evidence.certification_of(b.key)
    if cert is not None:
        return [f"Certification ({evidence.how}): {cert.verdict()}"]
    text = (f"Certification ({evidence.how}): {evidence.track}: not certified: no confirmation run of this variant "
            f"(`orch study confirm {report.name}` plans them).")
    return [text]


def _p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def variant_table(report: Report, variants: list[Variant]) -> tuple[list[str], list[list[str]]]:
    c = report.constraint
    cols = [*report.names, "runs", "hits", f"{report.metric} mean", "std"]
    if c:
        cols += [f"{c.metric} mean", "std", "p"]
    cols.append("")
    reverse = report.spec.objective.direction == "maximize"
    rows = []
    for v in sorted(variants, key=lambda v: v.mean, reverse=reverse):
        cells = [_fmt(v.params.get(n)) for n in report.names]
        cells += [str(v.stats.runs), str(v.stats.hits), _fmt(v.mean), _fmt(v.std) if v.stats.runs > 1 else ""]
        if c:
            cells += [_fmt(v.stats.mean_metric), _fmt(v.stats.std_metric) if v.stats.runs > 1 else "", _p(v.stats.p_value)]
        tags = []
        if report.best is not None and v.key == report.best.key:
            tags.append("best")
        if report.baseline is not None and v.key == report.baseline.key:
            tags.append("baseline")
        cells.append(", ".join(tags))
        rows.append(cells)
    return cols, rows


def run_table(report: Report, records: list[dict[str, Any]], *, extra: list[str] = ()) -> tuple[list[str], list[list[str]]]:
    """The round-table layout: trial, [experiment], parameters, machine, objective, constraint metrics, hit, note."""
    cols = ["trial", *(["experiment"] if report.has_experiment else []), *report.names, "machine", report.metric,
            *report.constraint_metrics, *extra, "hit", "note"]
    rows = []
    for r in records:
        cells = [str(r["number"])]
        if report.has_experiment:
            cells.append(_fmt(r.get("user_attrs.experiment")))
        cells += [_fmt(r.get("params." + n)) for n in report.names]
        cells += [r.get("machine") or "", _fmt(r["value"])]
        cells += [_fmt(r.get("metrics." + m)) for m in report.constraint_metrics]
        cells += [_fmt(r.get("metrics." + m)) for m in extra]
        cells += [mark(r), note_text(r)]
        rows.append(cells)
    return cols, rows


def early_exit_summary(report: Report) -> list[str]:
    runs = [r for r in report.early_exit if r["state"] == "complete"]
    if not runs:
        return [f"{len(report.early_exit)} early-exit runs, none complete."]
    hits = sum(1 for r in runs if r["feasible"])
    mean_value = sum(r["value"] for r in runs) / len(runs)
    text = f"{len(runs)} runs, {hits}/{len(runs)} met the target; mean {report.metric} {_fmt(mean_value)}"
    if report.cmetric:
        vals = [r.get(f"metrics.{report.cmetric}") for r in runs if r.get(f"metrics.{report.cmetric}") is not None]
        if vals:
            text += f", mean {report.cmetric} {_fmt(sum(vals) / len(vals))}"
    steps = sorted({int(r["metrics.steps"]) for r in runs if r.get("metrics.steps") is not None})
    if steps:
        text += ", exit step " + (str(steps[0]) if len(steps) == 1 else f"{steps[0]} to {steps[-1]}")
    return [text + "."]


def duty_table(report: Report) -> tuple[list[str], list[str], list[list[str]]]:
    """(sentences, columns, rows) of the duty-cycle section: timed training over machine time, per machine and in
    all (analysis/duty_cycle.py)."""
    duty = report.duty
    if duty is None or not duty.machines:
        return [], [], []
    view = duty.to_json()

    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.1f} %"

    cols = ["machine", "trials", "lanes", "timed training s", "trial time s", "machine time s", "in-trial",
            "occupancy", "duty cycle"]
    rows = [[m["machine"], str(m["trials"]), str(m["lanes"]), f"{m['timed_s']:.1f}", f"{m['trial_s']:.1f}",
             f"{m['span_s'] * m['lanes']:.1f}", pct(m["in_trial"]), pct(m["occupancy"]), pct(m["duty_cycle"])]
            for m in view["machines"]]
    if len(view["machines"]) > 1:
        rows.append(["all", str(view["trials"]), str(sum(m["lanes"] for m in view["machines"])),
                     f"{view['timed_s']:.1f}", f"{view['trial_s']:.1f}", f"{view['machine_s']:.1f}",
                     pct(view["in_trial"]), pct(view["occupancy"]), pct(view["duty_cycle"])])
    sentences = [f"The machines spent {pct(view['duty_cycle'])} of their time in timed training (the trainer's "
                 f"train_time): {view['timed_s']:.1f} s of {view['machine_s']:.1f} s. Machine time is each machine's "
                 "span from its first trial's slot taken to its last trial's end, times the slots (lanes) the study "
                 "used there; in-trial is timed training over the trials' own time (start, imports, compile, data, "
                 "validation are the rest), occupancy is the trials' time over machine time (dispatch and waiting "
                 "between trials are the rest)."]
    untimed = sum(m["untimed"] for m in view["machines"])
    if untimed:
        sentences.append(f"{untimed} trial(s) reported no training time and count as 0 s of it.")
    return sentences, cols, rows


def reproduction(report: Report) -> dict[str, Any]:
    """Facts of the best run, and the distinct environments of all runs."""
    r = report.best_run
    out: dict[str, Any] = {"run": None, "fields": [], "versions": [], "checksums": [], "command": None, "container": None,
                           "across": []}
    if r is not None:
        exp = f" (experiment {r['user_attrs.experiment']})" if r.get("user_attrs.experiment") is not None else ""
        out["run"] = f"trial {r['number']}{exp}, round {r['round']}"
        dirty = {True: " (uncommitted changes)", False: " (clean)"}.get(r.get("code_dirty"), "")
        gpu = f"{r['gpu_count']} × {r['gpu_model']}" if r.get("gpu_model") else (
            "no GPU" if r.get("gpu_count") == 0 else None)
        out["fields"] = [
            ("code revision", (r.get("code_revision") or "") + dirty if r.get("code_revision") else None),
            ("branch", r.get("code_branch")),
            ("container image", r.get("container_image")),
            ("container image ID", r.get("container_image_id")),
            ("GPU", gpu),
            ("driver", r.get("driver_version")),
            ("machine", r.get("machine")),
            ("started", r.get("started_at")),
            ("log", "/".join(str(r["log_path"]).replace("\\", "/").split("/")[-2:]) if r.get("log_path") else None),
        ]
        out["versions"] = sorted((json_field(r.get("versions")) or {}).items())
        out["checksums"] = sorted((json_field(r.get("file_checksums")) or {}).items())
        params = {n: r.get(f"params.{n}") for n in report.spec.parameters}
        try:  # rebuilt from the study: `python`, not the path of the machine's interpreter
            command = portable_command(report.spec, report.name, params)
        except (ValueError, KeyError):
            command = None
        argv = json_field(r.get("command"))
        if command is None and argv:  # an imported run: its command as recorded
            env = json_field(r.get("env")) or {}
            prefix = [f"{k}={v}" for k, v in sorted(env.items())]
            command = shlex.join(["env", *prefix, *map(str, argv)] if prefix else list(map(str, argv)))
        out["command"] = command
        out["container"] = container_command(r.get("container_image"), command) if command else None
    for label, key in (("code revision", "code_revision"), ("branch", "code_branch"), ("container image", "container_image"),
                       ("container image ID", "container_image_id"), ("GPU model", "gpu_model"),
                       ("GPU count", "gpu_count"), ("driver", "driver_version")):
        counts: dict[str, int] = {}
        for rec in report.records:
            if rec.get(key) not in (None, ""):
                counts[str(rec[key])] = counts.get(str(rec[key]), 0) + 1
        if counts:
            out["across"].append((label, ", ".join(f"{k} ({n})" for k, n in sorted(counts.items()))))
    lib: dict[str, dict[str, int]] = {}
    for rec in report.records:
        for k, v in (json_field(rec.get("versions")) or {}).items():
            lib.setdefault(k, {})
            lib[k][str(v)] = lib[k].get(str(v), 0) + 1
    for k in sorted(lib):
        out["across"].append((k, ", ".join(f"{v} ({n})" for v, n in sorted(lib[k].items()))))
    return out


# ------------------------------------------------------------------------------------------------ markdown
def render_markdown(report: Report, plots: list[tuple[str, str]] | None = None) -> str:
    """The write-up as GitHub markdown. `plots`: (relative PNG path, caption) pairs to link."""
    spec = report.spec
    done = [r for r in report.records if r["state"] == "complete"]
    lines = [f"# Study `{report.name}`", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += [f"Objective: {spec.objective.direction} `{report.metric}` subject to {report.target_text()}. "
              f"Sampler: {spec.sampler.name}. Trials: {len(report.records)} in {len(report.rounds)} rounds "
              f"({len(done)} complete, {sum(1 for r in done if r['feasible'])} met the target).", ""]
    head = headline(report)
    lines += ["## Headline", "", f"**{head['title']}**", ""]
    if head["rows"]:
        lines += md_table(["", *head["columns"]], head["rows"]) + [""]
    lines += [" ".join(head["sentences"]), ""] if head["sentences"] else []
    if report.page is not None:
        lines += [record_page.render("md", report, report.page, "lead").strip("\n"), ""]
    if report.variants:
        cols, rows = variant_table(report, report.variants)
        lines += ["## Variants", "", "Every variant with a complete run (search, baseline and confirmation runs), "
                  f"{'fastest' if spec.objective.direction == 'minimize' else 'best'} mean first.", ""]
        lines += md_table(cols, rows) + [""]
    lines += ["## Search progression", ""]
    for rnd in report.rounds:
        title = f"### Round {rnd.number}" if rnd.number else "### Recovered (asked before a controller died)"
        cols, rows = run_table(report, rnd.records)
        lines += [title, ""] + md_table(cols, rows) + [""]
        lines += [f"*After round {rnd.number}:* " + " ".join(rnd.conclusion), ""]
    if report.confirmation:
        lines += ["## Confirmation runs", ""]
        cols, rows = variant_table(report, report.confirmation_variants)
        lines += md_table(cols, rows) + [""]
        cols, rows = run_table(report, report.confirmation)
        lines += md_table(cols, rows) + [""]
    if report.page is not None:
        lines += [record_page.render("md", report, report.page, "evidence").strip("\n"), ""]
    if report.early_exit:
        lines += ["## Early-exit analysis", "", *early_exit_summary(report), ""]
        extra = ["steps"] if any(r.get("metrics.steps") is not None for r in report.early_exit) else []
        cols, rows = run_table(report, report.early_exit, extra=extra)
        lines += md_table(cols, rows) + [""]
    duty_sentences, duty_cols, duty_rows = duty_table(report)
    if duty_rows:
        lines += ["## Duty cycle", "", " ".join(duty_sentences), ""] + md_table(duty_cols, duty_rows) + [""]
    rep = reproduction(report)
    lines += ["## Reproduction", ""]
    if rep["run"] is None:
        lines += ["No complete run to reproduce.", ""]
    else:
        lines += [f"Best run: {rep['run']}.", ""]
        lines += md_table(["field", "value"], [[k, v if v not in (None, "") else "not recorded"] for k, v in rep["fields"]])
        lines += [""]
        if rep["versions"]:
            lines += ["Library versions (from the log):", ""] + md_table(["library", "version"], [[k, str(v)] for k, v in rep["versions"]]) + [""]
        else:
            lines += ["Library versions: not recorded.", ""]
        if rep["checksums"]:
            lines += ["File checksums (MD5):", ""] + md_table(["file", "md5"], [[k, str(v)] for k, v in rep["checksums"]]) + [""]
        else:
            lines += ["File checksums: not recorded.", ""]
        lines += (["Command of the best run:", "", "```sh", rep["command"], "```", ""] if rep["command"]
                  else ["Command of the best run: not recorded.", ""])
        lines += (["In the container image the runs used:", "", "```sh", rep["container"], "```", ""]
                  if rep["container"] else ["No container image was recorded: run the command in a checkout of the "
                                            "code revision above.", ""])
    if rep["across"]:
        lines += ["Across all trials:", ""] + md_table(["field", "values (trials)"], [list(x) for x in rep["across"]]) + [""]
    if plots:
        lines += ["## Plots", ""]
        for path, caption in plots:
            lines += [f"![{caption}]({path})", "", f"*{caption}*", ""]
    for note in report.notes:
        lines += [f"> {note}", ""]
    lines += [f"<sub>Generated by `orch export` from the data as of {report.generated_at}.</sub>", ""]
    return "\n".join(lines)


def markdown_report(db: Database, study: StudyRow) -> str:
    """RENDERERS['md']: the write-up without plots (plots need `--out`, see `write_export`)."""
    return render_markdown(build_report(db, study))


def _data_as_of(study: StudyRow, records: list[dict[str, Any]]) -> str:
    """When the study's data last changed (its newest trial end): an export is a function of the database,
    so exporting the same study twice gives the same text."""
    ends = [r["ended_at"] for r in records if r.get("ended_at")]
    when = max(ends) if ends else study.created_at.isoformat()
    return datetime.fromisoformat(str(when)).strftime("%Y-%m-%d %H:%M UTC")
