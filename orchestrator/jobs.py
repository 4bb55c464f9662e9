"""From a trial's parameter values to a job: derived values, argv and env, validated, never a shell line.

`JobSpec` is what every launcher runs. Values reach the job as separate argv elements or env vars,
formatted from validated numbers/choices; nothing is ever interpolated into a shell command.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from .config.expressions import ExpressionError, evaluate, parse_expression
from .config.study import StudySpec, early_exit_templates, template_fields
from .records import JobSpec
from .warm.plan import warm_plan


class InvalidParams(ValueError):
    """The sampled or enqueued values cannot make a valid job (out of range, derived bound broken)."""


def format_value(value: Any, spec: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if spec:
        return format(value, spec)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidParams(f"value {value} is not finite")
        return format(value, ".10g")
    return str(value)


def resolve_values(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """Check sampled values against their parameters and add the derived ones, in order."""
    values: dict[str, Any] = {}
    for name, param in spec.parameters.items():
        if name not in params:
            raise InvalidParams(f"parameter {name!r} has no value")
        value = params[name]
        if not param.contains(value):
            raise InvalidParams(f"parameter {name}={value!r} is outside its range")
        values[name] = int(value) if param.type == "int" else value
    for name, derived in spec.derived.items():
        try:
            value = float(evaluate(parse_expression(derived.expr), values))
        except ExpressionError as exc:
            raise InvalidParams(f"derived {name} = {derived.expr}: {exc}") from None
        if not math.isfinite(value):
            raise InvalidParams(f"derived {name} = {derived.expr} is not finite")
        if derived.min is not None and value < derived.min - 1e-12:
            raise InvalidParams(f"derived {name} = {value:.6g} is below its min {derived.min:g}")
        if derived.max is not None and value > derived.max + 1e-12:
            raise InvalidParams(f"derived {name} = {value:.6g} is above its max {derived.max:g}")
        values[name] = round(value, 12)
    return values


def apply_injection(spec: StudySpec, values: dict[str, Any], job: JobSpec, workdir: Path, spec_dir: Path) -> str | None:
    """Let the study's injector prepare the trial's files/argv/env; returns the diff to store, if any."""
    inject = spec.trainer.inject
    if inject is None:
        return None
    from .injection import InjectionError, get_injector
    from .injection.base import resolve_path_options

    options = resolve_path_options(inject.options, spec_dir)
    params = {inject.map.get(name, name): value for name, value in values.items() if not inject.map or name in inject.map}
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = get_injector(inject.name).prepare(params, workdir, options)
    except InjectionError as exc:
        raise InvalidParams(f"injection ({inject.name}): {exc}") from None
    job.argv += result.argv
    job.env.update(result.env)
    return result.diff or None


def _render(template: str, names: dict[str, Any]) -> str:
    out = template
    for name, fmt in template_fields(template):
        out = out.replace("{" + name + (":" + fmt if fmt else "") + "}", format_value(names[name], fmt))
    return out


def build_job(spec: StudySpec, study: str, trial: int, repeat: int, values: dict[str, Any],
              python: str | None = None, environ: dict[str, str] | None = None,
              early_exit: dict[str, Any] | None = None, steps: int | None = None,
              unmodified: bool = False, checksums: dict[str, str] | None = None,
              spec_dir: Path | None = None) -> JobSpec:
    """The job for one trial. `{python}` in the command is the interpreter that runs jobs. `early_exit`
    ({"target": X, "max_steps": S}, an early-exit run's user attr) adds the study's early-exit templates; `steps`
    (a step-cut run's user attr) the study's `trainer.steps` templates. `unmodified`: the trainer's command and
    env alone, none of the study's parameters or arguments (a paired baseline of the unmodified script).
    `checksums` (the training files' checksums, as the trial row stores them) and `spec_dir` (the study file's
    folder) give the job its warm plan (orchestrator/warm): caches keyed by them, the study's data staged; without
    `checksums` the job has none (a job built only to be shown)."""
    environ = os.environ if environ is None else environ
    names = {**values, "trial": trial, "repeat": repeat, "seed": trial, "study": study}
    argv = [python or sys.executable if part == "{python}" else part for part in spec.trainer.command]
    env = dict(spec.trainer.env)
    params_and_derived = {**{n: (p.flag, p.env, p.format) for n, p in spec.parameters.items()},
                          **{n: (d.flag, d.env, d.format) for n, d in spec.derived.items()}}
    if unmodified:
        params_and_derived, arguments = {}, type(spec.arguments)()
    else:
        arguments = spec.arguments
    for name, (flag, env_name, fmt) in params_and_derived.items():
        text = format_value(values[name], fmt or "")
        if flag:
            argv += [flag, text]
        if env_name:
            env[env_name] = text
    for flag, template in arguments.flags.items():
        argv += [flag, _render(template, names)]
    for env_name, template in arguments.env.items():
        env[env_name] = _render(template, names)
    if steps is not None:
        if spec.trainer.steps is None:
            raise InvalidParams("the study does not say how its trainer is told its step count (trainer.steps)")
        step_names = {**names, "steps": int(steps)}
        for flag, template in spec.trainer.steps.flags.items():
            argv += [flag, _render(template, step_names)]
        for env_name, template in spec.trainer.steps.env.items():
            env[env_name] = _render(template, step_names)
    if early_exit is not None:
        templates = early_exit_templates(spec)
        if templates is None:
            raise InvalidParams("the study does not say how its trainer exits at the target (trainer.early_exit)")
        exit_names = {**names, "target": float(early_exit["target"]), "max_steps": int(early_exit["max_steps"])}
        for flag, template in templates.flags.items():
            argv += [flag, _render(template, exit_names)]
        for env_name, template in templates.env.items():
            env[env_name] = _render(template, exit_names)
    for part in argv:
        if "\x00" in part:
            raise InvalidParams("an argument contains a NUL byte")
    secrets = {}
    for name in spec.trainer.secret_env:
        if name in environ:
            secrets[name] = environ[name]
    plan = None if checksums is None else warm_plan(spec, Path(spec_dir or "."), checksums)
    return JobSpec(study=study, trial=trial, argv=argv, env=env, secret_env=secrets, gpus=spec.resources.gpus,
                   timeout_s=spec.timeout_s, image=spec.trainer.image, log_format=spec.trainer.log_format, warm=plan)
