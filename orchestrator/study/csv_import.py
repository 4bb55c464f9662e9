"""Importing finished runs from elsewhere into the results database (`orch import csv`).

A table of past runs, one row per run, like shared/reference/stage-shift-2026-03-15.csv:

    round,experiment,stage1,stage2,stage3,machine,time_s,val_loss,note
    1,1,0.3333,0.3333,0.3333,b200-0,58.04,3.278,baseline (equal thirds)

Columns:
- ``round`` (required): the round the run belongs to (an integer >= 0; rounds group the write-up tables).
- ``experiment``, ``machine``, ``note``, ``kind`` (optional): the run's label in the source, the machine it ran
  on, free text, and its kind (``search``, ``baseline``, ``confirmation``, ``early_exit``; see docs/export.md).
- metric columns: the objective's metric and every constraint's metric are required; ``time_s`` is read as
  ``train_time_s``; other known metric names (``val_bpb``, ``steps``, ...) are kept as metrics.
- every other column is a parameter (numeric). With ``--from study.yaml`` the parameters are the study's and
  each must have a column (derived ones may have one too).

Without ``--from`` a study spec is generated: one float parameter per parameter column (range = the values
seen; int when all values are whole numbers), the objective (default: minimize train_time_s subject to
val_loss <= 3.28), sampler tpe and a budget equal to the number of rows (so `orch study run` finds it spent).

Every row becomes an Optuna trial (``optuna.trial.create_trial``: params, value, constraints stored the
way ``Trial.set_constraint`` stores them, as system attrs ``constraints:<metric>``) and an ``orch_trials``
row with the same number, state ``complete``, the round, machine, note, metrics and feasibility. The whole
file is checked before anything is written; a bad file gives one message naming the file, line and column,
and leaves the database untouched. If writing fails part way, the Optuna study is deleted and our rows
are rolled back (one transaction).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import yaml

from db import Database, StudyRow, TrialRow
from db.models import EventRow

from ..config.errors import OrchError
from ..config.study import StudySpec, load_study_text
from ..jobs import InvalidParams, resolve_values
from ..records import variant_key
from ..samplers.space import distributions
from .lifecycle import new_optuna_study, validate_study_file

DEFAULT_OBJECTIVE = "minimize:train_time_s"
DEFAULT_CONSTRAINTS = ("val_loss <= 3.28",)
RESERVED = ("round", "experiment", "machine", "note", "kind")
METRIC_ALIASES = {"time_s": "train_time_s", "time": "train_time_s", "train_time": "train_time_s"}
KNOWN_METRICS = frozenset({
    "val_loss", "val_bpb", "train_time_s", "train_time_ms", "step_avg_ms", "steps", "tokens", "peak_memory_mib",
    "core", "core_metric", "total_training_time", "artifact_bytes", "train_loss",
})
KINDS = {"search", "baseline", "confirmation", "early_exit"}


class CsvImportError(OrchError):
    """A bad table or import request; the message names the file, line and column."""


@dataclass
class ImportedRun:
    line: int
    round: int
    experiment: Any
    machine: str | None
    note: str | None
    kind: str | None
    params: dict[str, Any]  # the study's parameters (what Optuna stores)
    values: dict[str, Any]  # params + derived (what our row stores)
    metrics: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportResult:
    study: StudyRow
    runs: int
    rounds: int
    hits: int
    generated_spec: bool


def parse_objective(text: str) -> tuple[str, str]:
    """`minimize:METRIC`, `maximize:METRIC`, `minimize METRIC` or plain `METRIC` (minimize)."""
    m = re.match(r"^\s*(?:(minimize|maximize)\s*[: ]\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*$", text or "")
    if not m:
        raise CsvImportError(f"--objective {text!r} is malformed (fix: write minimize:METRIC or maximize:METRIC)")
    return m.group(1) or "minimize", METRIC_ALIASES.get(m.group(2), m.group(2))


def _number(text: str, where: str, column: str, *, integer: bool = False) -> float | int:
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise CsvImportError(f"{where}: column {column!r}: {raw!r} is not {kind} (fix: write {kind} there)") from None
    if not math.isfinite(value):
        raise CsvImportError(f"{where}: column {column!r}: {raw!r} is not a finite number (fix: write a finite number)")
    if integer:
        if value != int(value):
            raise CsvImportError(f"{where}: column {column!r}: {raw!r} is not an integer (fix: write a whole number)")
        return int(value)
    return value


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) pairs of a CSV file; blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CsvImportError(f"{path}: no such file (fix: check the path)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CsvImportError(f"{path}: cannot read it as UTF-8 text ({exc}) (fix: save the table as UTF-8 CSV)") from None
    reader = csv.reader(text.splitlines())
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes:
                    raise CsvImportError(f"{path}:{line}: column {dupes[0]!r} appears twice in the header "
                                         "(fix: give every column a distinct name)")
                if any(not c for c in header):
                    raise CsvImportError(f"{path}:{line}: the header has an empty column name "
                                         "(fix: name every column)")
                continue
            if len(cells) != len(header):
                raise CsvImportError(f"{path}:{line}: {len(cells)} cells, the header has {len(header)} "
                                     "(fix: one cell per column; quote cells that contain commas)")
            rows.append((line, dict(zip(header, cells))))
    except csv.Error as exc:
        raise CsvImportError(f"{path}:{reader.line_num}: not valid CSV ({exc}) (fix: check the quoting)") from None
    if header is None:
        raise CsvImportError(f"{path}: the file is empty (fix: a header line and one row per run)")
    if not rows:
        raise CsvImportError(f"{path}: the table has a header but no runs (fix: add one row per run)")
    return header, rows


def _metric_of(column: str) -> str:
    return METRIC_ALIASES.get(column, column)


def _spec_from_options(objective: str | None, constraints: list[str] | None) -> tuple[str, str, list[str]]:
    direction, metric = parse_objective(objective or DEFAULT_OBJECTIVE)
    subject_to = list(DEFAULT_CONSTRAINTS if constraints is None else constraints)
    subject_to = [c for c in subject_to if c.strip().lower() not in ("", "none")]
    out = []
    for text in subject_to:
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$", text)
        if not m:
            raise CsvImportError(f"--constraint {text!r} is malformed (fix: write METRIC <= NUMBER or METRIC >= NUMBER)")
        try:
            float(m.group(3))
        except ValueError:
            raise CsvImportError(f"--constraint {text!r}: {m.group(3)!r} is not a number (fix: write a number)") from None
        out.append(f"{_metric_of(m.group(1))} {m.group(2)} {m.group(3)}")
    return direction, metric, out


def _generated_spec(path: Path, param_columns: list[str], columns_values: dict[str, list[float]], n_runs: int,
                    n_rounds: int, per_round: int, direction: str, metric: str, subject_to: list[str]) -> tuple[StudySpec, str]:
    parameters: dict[str, Any] = {}
    for name in param_columns:
        values = columns_values[name]
        low, high = min(values), max(values)
        if all(float(v).is_integer() for v in values):
            low, high = int(low), int(high)
            parameters[name] = {"type": "int", "low": low, "high": high if high > low else low + 1}
        else:
            if high <= low:
                pad = abs(low) * 1e-6 or 1e-6
                low, high = low - pad, high + pad
            parameters[name] = {"type": "float", "low": float(low), "high": float(high)}
    doc = {
        "description": f"Imported from {path.name}: {n_runs} finished runs in {n_rounds} rounds (orch import csv).",
        "trainer": {"command": ["{python}", "-c", "raise SystemExit('this study was imported from a table of "
                                                  "finished runs: it has no trainer to run')"],
                    "log_format": "orch"},
        "parameters": parameters,
        "objective": {direction: metric, "subject_to": subject_to},
        "sampler": {"name": "tpe"},
        "budget": {"max_trials": n_runs, "parallel": max(1, min(per_round, n_runs)), "dispatch": "rounds"},
    }
    text = (f"# Generated by `orch import csv {path.name}` on {datetime.now(timezone.utc):%Y-%m-%d}: the runs of that\n"
            "# table, with parameter ranges spanning the values seen. Pass --from STUDY.yaml to import under your own spec.\n"
            + yaml.safe_dump(doc, sort_keys=False))
    try:
        spec, _ = load_study_text(text, file=f"<study generated from {path.name}>")
    except OrchError as exc:  # e.g. a column name that is not an identifier
        raise CsvImportError(f"{path}: cannot build a study from the table's columns: {exc}") from None
    return spec, text


def plan_import(path: str | Path, *, objective: str | None = None, constraints: list[str] | None = None,
                from_: str | Path | None = None) -> tuple[StudySpec, str, Path | None, list[ImportedRun]]:
    """Read and check everything; nothing is written. Returns (spec, spec text, spec file, runs)."""
    path = Path(path)
    header, rows = read_table(path)
    spec_path: Path | None = None
    if from_ is not None:
        if objective is not None or constraints:
            raise CsvImportError("--from takes the objective and constraints from the study file "
                                 "(fix: drop --objective/--constraint, or drop --from)")
        spec_path = Path(from_)
        spec, text = validate_study_file(spec_path)
        metric, cons = spec.objective.metric, [c.metric for c in spec.objective.constraints]
    else:
        direction, metric, subject_to = _spec_from_options(objective, constraints)
        cons = [s.split()[0] for s in subject_to]
        spec, text = None, ""  # type: ignore[assignment]
    by_metric = {_metric_of(c): c for c in header if c not in RESERVED}
    required = ["round"] + [m for m in [metric, *cons]]
    missing = [m for m in required if (m == "round" and "round" not in header) or (m != "round" and m not in by_metric)]
    if missing:
        shown = [f"{m!r}" + (" (or 'time_s')" if m == "train_time_s" else "") for m in missing]
        raise CsvImportError(f"{path}:1: missing column{'s' if len(missing) > 1 else ''} {', '.join(shown)} "
                             f"(header: {', '.join(header)}) (fix: add the column, or change --objective/--constraint)")
    metric_columns = {by_metric[m]: m for m in [metric, *cons]}
    if spec is not None:
        names = [*spec.parameters, *spec.derived]
        absent = [n for n in spec.parameters if n not in header]
        if absent:
            raise CsvImportError(f"{path}:1: missing parameter column{'s' if len(absent) > 1 else ''} "
                                 f"{', '.join(repr(a) for a in absent)} of {spec_path} (fix: add the column)")
        param_columns = [c for c in header if c in names]
        for c in header:
            if c not in RESERVED and c not in metric_columns and c not in param_columns:
                metric_columns[c] = _metric_of(c)  # extra numeric columns are kept as metrics
    else:
        for c in header:
            if c not in RESERVED and c not in metric_columns and _metric_of(c) in KNOWN_METRICS:
                metric_columns[c] = _metric_of(c)
        param_columns = [c for c in header if c not in RESERVED and c not in metric_columns]
        if not param_columns:
            raise CsvImportError(f"{path}:1: no parameter columns (header: {', '.join(header)}) "
                                 "(fix: add one column per searched parameter)")
    runs: list[ImportedRun] = []
    columns_values: dict[str, list[float]] = {c: [] for c in param_columns}
    for line, row in rows:
        where = f"{path}:{line}"
        needed = ["round", *[c for c in param_columns if spec is None or c in spec.parameters],
                  *[c for c, m in metric_columns.items() if m in (metric, *cons)]]
        for c in needed:
            if not row[c].strip():
                raise CsvImportError(f"{where}: column {c!r} is empty (fix: fill it in, or remove the row)")
        rnd = _number(row["round"], where, "round", integer=True)
        if rnd < 0:
            raise CsvImportError(f"{where}: column 'round': {rnd} is negative (fix: number rounds from 1)")
        params: dict[str, Any] = {}
        for c in param_columns:
            if spec is not None and c in spec.derived and not row[c].strip():
                continue
            params[c] = _number(row[c], where, c)
            columns_values[c].append(params[c])
        metrics = {metric_columns[c]: float(_number(row[c], where, c)) for c in metric_columns if row[c].strip()}
        experiment: Any = row.get("experiment", "").strip() or None
        if experiment is not None and re.fullmatch(r"-?\d+", experiment):
            experiment = int(experiment)
        kind = (row.get("kind") or "").strip().lower().replace("-", "_").replace(" ", "_") or None
        if kind is not None and kind not in KINDS:
            raise CsvImportError(f"{where}: column 'kind': {kind!r} is not one of {', '.join(sorted(KINDS))} "
                                 "(fix: use one of them, or leave it empty)")
        runs.append(ImportedRun(line=line, round=int(rnd), experiment=experiment,
                                machine=(row.get("machine") or "").strip() or None,
                                note=(row.get("note") or "").strip() or None, kind=kind,
                                params=params, values=dict(params), metrics=metrics))
    if spec is None:
        rounds = sorted({r.round for r in runs})
        per_round = max(sum(1 for r in runs if r.round == k) for k in rounds)
        spec, text = _generated_spec(path, param_columns, columns_values, len(runs), len(rounds), per_round,
                                     direction, metric, subject_to)
    dists = distributions(spec)
    for run in runs:
        where = f"{path}:{run.line}"
        sampled = {k: v for k, v in run.params.items() if k in spec.parameters}
        for name, value in sampled.items():
            param = spec.parameters[name]
            if param.type == "int":
                if float(value) != int(value):
                    raise CsvImportError(f"{where}: column {name!r}: {value!r} is not an integer (fix: write a whole number)")
                sampled[name] = value = int(value)
            dist = dists[name]
            if not param.contains(value) or not dist._contains(dist.to_internal_repr(value)):
                raise CsvImportError(f"{where}: column {name!r}: {value!r} is outside the parameter's range in "
                                     f"{spec_path or 'the study'} ({_range_text(param)}) (fix: widen the range in the "
                                     "study file, or fix the value)")
        try:
            values = resolve_values(spec, sampled)
        except InvalidParams as exc:
            raise CsvImportError(f"{where}: {exc} (fix: fix the row's parameters or the study's derived bounds)") from None
        values.update({k: v for k, v in run.params.items() if k not in spec.parameters})  # derived as recorded
        run.params, run.values = sampled, values
    return spec, text, spec_path, runs


def _range_text(param) -> str:
    if param.type == "categorical":
        return f"choices {param.choices}"
    text = f"{param.low:g}..{param.high:g}"
    return text + (f" step {param.step:g}" if param.step else "")


def import_csv(db: Database, path: str | Path, study_name: str, *, objective: str | None = None,
               constraints: list[str] | None = None, from_: str | Path | None = None) -> ImportResult:
    """Create study `study_name` from the finished runs of a CSV table (see the module doc)."""
    path = Path(path)
    spec, text, spec_path, runs = plan_import(path, objective=objective, constraints=constraints, from_=from_)
    storage = new_optuna_study(db, study_name, spec.objective.direction, "pick another name with --study")
    try:
        return _write(db, storage, study_name, path, spec, text, spec_path, runs)
    except BaseException:
        optuna.delete_study(study_name=study_name, storage=storage)
        raise


def _write(db: Database, storage, study_name: str, path: Path, spec: StudySpec, text: str, spec_path: Path | None,
           runs: list[ImportedRun]) -> ImportResult:
    study = optuna.load_study(study_name=study_name, storage=storage)
    dists = distributions(spec)
    metric, constraints = spec.objective.metric, spec.objective.constraints
    trials, feasible = [], []
    for run in runs:
        violations = {c.metric: c.violation(run.metrics[c.metric]) for c in constraints}
        feasible.append(all(v <= 0 for v in violations.values()))
        user_attrs: dict[str, Any] = {"round": run.round, "imported_from": path.name, "line": run.line, **run.metrics}
        for key in ("experiment", "machine", "note", "kind"):
            if getattr(run, key) is not None:
                user_attrs[key] = getattr(run, key)
        trials.append(optuna.trial.create_trial(
            params=run.params, distributions={k: dists[k] for k in run.params}, value=run.metrics[metric],
            user_attrs=user_attrs, constraints=violations or None))
    study.add_trials(trials)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    now = datetime.now(timezone.utc)
    with db.session() as s:
        row = StudyRow(name=study_name, optuna_study_name=study_name, spec=spec.model_dump(mode="json"),
                       spec_yaml=text, spec_path=str(spec_path.resolve()) if spec_path else None,
                       spec_dir=str((spec_path or path).resolve().parent), objective_metric=metric,
                       direction=spec.objective.direction, status="finished",
                       rounds=max(r.round for r in runs), finished_at=now)
        s.add(row)
        s.flush()
        for number, (run, ok) in enumerate(zip(runs, feasible)):
            trial = frozen[number]
            s.add(TrialRow(study_id=row.id, number=trial.number, optuna_trial_id=trial._trial_id, round=run.round,
                           variant=variant_key(run.params), params=run.values, state="complete", machine=run.machine,
                           value=run.metrics[metric], feasible=ok, metrics=dict(run.metrics), note=run.note,
                           exit_reason="imported", created_at=now))
        s.add(EventRow(study_id=row.id, kind="study.state", new="finished",
                       message=f"imported {len(runs)} runs from {path}"))
    return ImportResult(study=row, runs=len(runs), rounds=len({r.round for r in runs}), hits=sum(feasible),
                        generated_spec=spec_path is None)


__all__ = ["CsvImportError", "ImportResult", "import_csv", "plan_import", "read_table", "parse_objective"]
