"""Validate-time checks of a study: what its first trial would hit, found by `orch study validate` / `create`.

- the trainer's `code_dir` exists, and so does every `*.py` file its command names (relative to code_dir). A
  code_dir that is absent on this machine is a warning, not an error (the shipped example studies point at
  sibling checkouts of modded-nanogpt, parameter-golf and nanochat), and the checks below that need its files are
  then skipped, except an injection script given outside it;
- the injection applies: the injector's `check` (orchestrator/injection/base.py) prepares the parameter sets at
  the ends of every range in a scratch directory, so a patch that cannot apply or a name the script never reads
  is an error now, not a stream of invalid trials;
- env values are formatted for their type: a parameter passed as `env:` to a variable the script reads with
  `int()` must format as a whole number (`1200`, not `1200.0`); packed scripts are unpacked before names and
  types are read;
- the study's data (`trainer.data`, orchestrator/warm): every file exists and has the sha256 the study or its
  manifest names.

`check_study(spec, spec_dir)` returns the problems as (field path, message, fix) triples; `validate_study_file`
wraps `study.lifecycle.validate_study_file` and raises the first as a ConfigError naming the file and field.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config.errors import ConfigErrors
from ..config.study import load_study_file
from ..injection import InjectionError, env_var_types, get_injector
from ..injection.base import resolve_path_options
from ..jobs import InvalidParams, format_value, resolve_values
from .lifecycle import validate_study_file as validate_spec

Problem = tuple[tuple, str, str]


def _ends(spec) -> list[dict[str, Any]]:
    """Parameter sets at the low and the high end of every range (categoricals: their first and last choice), with
    the derived values a trial there gets (a map may name them: stage2 = 1 - stage1 - stage3). An end whose derived
    values fall outside their min/max is left out: such a point is skipped at run time, never prepared."""

    low, high = {}, {}
    for name, p in spec.parameters.items():
        if p.type == "categorical":
            low[name], high[name] = p.choices[0], p.choices[-1]
        elif p.type == "int":
            low[name], high[name] = int(p.low), int(p.high)
        else:
            low[name], high[name] = float(p.low), float(p.high)
    ends = []
    for values in (low, high):
        try:
            ends.append(resolve_values(spec, values))
        except InvalidParams:
            continue
    return ends


def _script_path(spec, spec_dir: Path) -> Path | None:
    inject = spec.trainer.inject
    script = resolve_path_options(inject.options, spec_dir).get("script") if inject is not None else None
    return Path(script) if script else None


def check_study(spec, spec_dir: Path, warnings: list[str] | None = None) -> list[Problem]:
    problems: list[Problem] = []
    code_dir = (spec_dir / spec.trainer.code_dir).resolve()
    script = _script_path(spec, spec_dir)
    if not code_dir.is_dir():
        if warnings is not None:
            warnings.append(f"code_dir {spec.trainer.code_dir!r} ({code_dir}) is not on this machine: its training "
                            "script and the injection were not checked")
        if script is None or script.is_relative_to(code_dir) or not script.exists():
            return problems
    for i, part in enumerate(spec.trainer.command):
        if not code_dir.is_dir():
            break
        if part.endswith(".py") and not part.startswith("-") and not (code_dir / part).is_file():
            problems.append((("trainer", "command", i), f"the training script {part!r} is not in code_dir ({code_dir})",
                             "fix the path (relative to code_dir) or code_dir"))
    inject = spec.trainer.inject
    if inject is not None:
        options = resolve_path_options(inject.options, spec_dir)
        samples = [{inject.map.get(n, n): v for n, v in s.items() if not inject.map or n in inject.map}
                   for s in _ends(spec)]
        try:
            found = get_injector(inject.name).check(samples, options)
        except InjectionError as err:
            found = [str(err)]
        for message in found:
            problems.append((("trainer", "inject"), f"injection ({inject.name}) at the ends of the ranges: {message}",
                             "fix the parameter ranges, the map or the script so every trial can be prepared"))
    # env values of parameters (`env:` on a parameter) against the types the script converts them to
    env_script = script
    if env_script is None:
        env_script = next((code_dir / part for part in spec.trainer.command if part.endswith(".py")
                           and code_dir.is_dir() and (code_dir / part).is_file()), None)
    if env_script is not None:
        problems += _env_type_problems(spec, env_script)
    return problems


def _env_type_problems(spec, script: Path) -> list[Problem]:

    try:
        types = env_var_types(script)
    except InjectionError:
        return []
    out: list[Problem] = []
    ends = _ends(spec)
    for name, p in spec.parameters.items():
        if not p.env or types.get(p.env) != "int":
            continue
        for values in ends:
            text = format_value(values[name], p.format or "")
            try:
                int(text)
            except ValueError:
                out.append((("parameters", name, "env"),
                            f"{script.name} reads ${p.env} with int(), but {name} = {values[name]!r} reaches it as {text!r}",
                            "make the parameter type: int, or give it a whole-number format such as format: \"d\" / \".0f\""))
                break
    return out


def validate_study_file(path: str | Path):
    """`study.lifecycle.validate_study_file`, then `check_study`; raises ConfigErrors (or the one ConfigError)
    naming the study file, the line and the field."""

    spec, text = validate_spec(path)
    warnings: list[str] = []
    from ..warm.plan import data_problems  # trainer.data: every file there, with the sha256 the study names

    spec_dir = Path(path).resolve().parent
    problems = check_study(spec, spec_dir, warnings) + data_problems(spec, spec_dir)
    for warning in warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    if problems:
        _, doc = load_study_file(path)
        errors = [doc.error(field, message, fix=fix) for field, message, fix in problems]
        raise errors[0] if len(errors) == 1 else ConfigErrors(errors)
    return spec, text
