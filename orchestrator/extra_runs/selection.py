"""Which variant an extra run uses, checked before anything is written: the best K by the write-up's ranking,
a trial's variant (`#12`), or parameter values given on the command line (`stage1=0.36,stage2=0.31`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from db import Database, StudyRow, TrialRow

from ..config.errors import OrchError
from ..config.study import StudySpec
from ..analysis.results import STATS_KINDS, Variant, full_records, study_variants, top_variants
from ..jobs import InvalidParams, build_job, resolve_values
from ..samplers import distributions


def arg_error(option: str, problem: str, fix: str) -> OrchError:
    return OrchError(f"{option}: {problem} (fix: {fix})")


def ranked_variants(db: Database, row: StudyRow, spec: StudySpec) -> tuple[list[Variant], list[Variant]]:
    """(every variant with a complete search/baseline/confirmation run, the eligible ones best first)."""
    records = [r for r in full_records(db, row) if r["state"] != "invalid" and r["kind"] in STATS_KINDS]
    variants = study_variants(spec, records)
    constraints = spec.objective.constraints
    return variants, top_variants(variants, constraints[0] if constraints else None, len(variants))


def _eligibility(spec: StudySpec) -> str:
    constraints = spec.objective.constraints
    if not constraints:
        return "every variant with a complete run"
    return f"a hit rate of at least 50% and a mean {constraints[0].metric} that meets {constraints[0]}"


def pick_top(db: Database, row: StudyRow, spec: StudySpec, k: int) -> list[dict[str, Any]]:
    """The parameters of the best `k` variants, best first."""
    variants, eligible = ranked_variants(db, row, spec)
    if not variants:
        raise arg_error("--top", f"study {row.name!r} has no complete run yet",
                        f"run the search first (`orch study run {row.name}`)")
    if k > len(eligible):
        raise arg_error("--top", f"{k} variants asked, but only {len(eligible)} of the study's {len(variants)} "
                        f"variants are eligible ({_eligibility(spec)})",
                        f"use --top {len(eligible)}" if eligible else "run more of the search first")
    return [checked_params(spec, study_params(spec, v.params), "--top") for v in eligible[:k]]


def study_params(spec: StudySpec, values: dict[str, Any]) -> dict[str, Any]:
    """The study's own parameters out of a row's values (which also hold the derived ones)."""
    return {name: values[name] for name in spec.parameters if name in values}


def pick_variant(db: Database, row: StudyRow, spec: StudySpec, text: str) -> dict[str, Any]:
    """`best`, `#N` (trial N's variant) or `k=v,k=v` -> the variant's parameters."""
    text = text.strip()
    if text == "best":
        _, eligible = ranked_variants(db, row, spec)
        if not eligible:
            raise arg_error("--variant", f"study {row.name!r} has no eligible variant ({_eligibility(spec)})",
                            "name one: --variant '#12' (a trial's variant) or --variant 'stage1=0.36,...'")
        return checked_params(spec, study_params(spec, eligible[0].params), "--variant")
    if text.startswith("#"):
        if not text[1:].isdigit():
            raise arg_error("--variant", f"{text!r} is not a trial number", "write # and the trial's number, e.g. '#12'")
        number = int(text[1:])
        with db.session() as s:
            trial = s.scalar(select(TrialRow).where(TrialRow.study_id == row.id, TrialRow.number == number))
            known = s.scalars(select(TrialRow.number).where(TrialRow.study_id == row.id, TrialRow.state != "invalid")
                              .order_by(TrialRow.number)).all()
        if trial is None or trial.state == "invalid":
            span = f"its trials are {known[0]}..{known[-1]}" if known else "it has no trial yet"
            raise arg_error("--variant", f"study {row.name!r} has no valid trial #{number} ({span})",
                            "pick a trial from `orch export` or `orch study status`")
        return checked_params(spec, study_params(spec, trial.params), "--variant")
    if "=" in text:
        return parse_params(spec, text, "--variant")
    raise arg_error("--variant", f"{text!r} names no variant", "use best, a trial number like '#12', or "
                    "parameter values like 'stage1=0.36,stage2=0.31'")


def parse_params(spec: StudySpec, text: str, option: str = "--params") -> dict[str, Any]:
    """`k=v,k=v` -> every parameter of the study with a value of its type, in its range and on its grid."""
    names = ", ".join(spec.parameters)
    values: dict[str, Any] = {}
    for piece in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, raw = piece.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise arg_error(option, f"{piece!r} is not name=value", f"write e.g. {next(iter(spec.parameters))}=VALUE")
        if name in spec.derived:
            raise arg_error(option, f"{name} is derived ({name} = {spec.derived[name].expr})",
                            f"give only the study's parameters: {names}")
        if name not in spec.parameters:
            raise arg_error(option, f"{name!r} is not a parameter of the study", f"use the parameters {names}")
        if name in values:
            raise arg_error(option, f"{name} is given twice", "give each parameter once")
        values[name] = _typed(spec, name, raw, option)
    missing = [n for n in spec.parameters if n not in values]
    if missing:
        raise arg_error(option, f"no value for {', '.join(missing)}", f"give every parameter of the study: {names}")
    return checked_params(spec, values, option)


def _typed(spec: StudySpec, name: str, raw: str, option: str) -> Any:
    param = spec.parameters[name]
    if param.type == "categorical":
        for choice in param.choices or []:
            if str(choice).lower() == raw.lower():
                return choice
        raise arg_error(option, f"{name}={raw} is not one of its choices",
                        f"use one of {', '.join(str(c) for c in param.choices or [])}")
    try:
        number = float(raw)
    except ValueError:
        raise arg_error(option, f"{name}={raw} is not a number", f"give {name} a number") from None
    if param.type == "int":
        if number != int(number):
            raise arg_error(option, f"{name}={raw} is not a whole number", f"give {name} an integer")
        return int(number)
    return number


def checked_params(spec: StudySpec, params: dict[str, Any], option: str) -> dict[str, Any]:
    """Values normalised to their parameter's type and checked against the study's ranges, step grids and
    derived bounds (the controller would otherwise skip the trial as invalid)."""
    dists = distributions(spec)
    out: dict[str, Any] = {}
    for name, param in spec.parameters.items():
        if name not in params:
            raise arg_error(option, f"the variant has no value for {name}", "pick a variant of this study")
        value = params[name]
        if param.type == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        elif param.type == "int" and isinstance(value, float) and value == int(value):
            value = int(value)
        if not param.contains(value):
            span = (f"one of {', '.join(map(str, param.choices or []))}" if param.type == "categorical"
                    else f"{param.low:g}..{param.high:g}")
            raise arg_error(option, f"{name}={value} is outside its range ({span})", f"give {name} a value in {span}")
        dist = dists[name]
        if param.type != "categorical" and not dist._contains(dist.to_internal_repr(value)):
            step = param.step or 1
            below = param.low + int((value - param.low) // step) * step
            raise arg_error(option, f"{name}={value:g} is not on the study's grid (low {param.low:g}, step {step:g})",
                            f"use {below:.10g} or {below + step:.10g}")
        out[name] = value
    try:
        resolve_values(spec, out)
    except InvalidParams as exc:
        raise arg_error(option, str(exc), "choose values whose derived parameters stay within their bounds") from None
    return out


def check_job(spec: StudySpec, study: str, params: dict[str, Any], early_exit: dict[str, Any] | None,
              option: str) -> None:
    """Build the job once (nothing runs) so a template that cannot render fails before anything is written."""
    try:
        build_job(spec, study, 0, 0, resolve_values(spec, params), early_exit=early_exit, environ={})
    except (InvalidParams, ValueError, KeyError) as exc:
        raise arg_error(option, f"the job cannot be built: {exc}", "check the study's arguments and "
                        "trainer.early_exit templates") from None
