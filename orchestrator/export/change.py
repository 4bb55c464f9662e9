"""What a variant changes against the baseline, for the write-up and the record folder: the diff of the injected
training script when the runs have one, else the diff of the training command rebuilt from the study (one
argument a line, the same seed on both sides, `python` for the interpreter: no path of the machine), the
parameters that changed and those that did not, and the portable command that reproduces a run."""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass
from typing import Any

from ..config.study import StudySpec
from ..jobs import build_job, resolve_values


def _job(spec: StudySpec, study: str, params: dict[str, Any], unmodified: bool = False):
    return build_job(spec, study, 0, 0, resolve_values(spec, params), python="python", environ={},
                     unmodified=unmodified)


def command_lines(spec: StudySpec, study: str, params: dict[str, Any], unmodified: bool = False) -> list[str]:
    job = _job(spec, study, params, unmodified)
    return [f"{k}={v}\n" for k, v in sorted(job.env.items())] + [f"{a}\n" for a in job.argv]


def portable_command(spec: StudySpec, study: str, params: dict[str, Any]) -> str:
    job = _job(spec, study, params)
    return shlex.join([*(f"{k}={v}" for k, v in sorted(job.env.items())), *job.argv])


def container_command(image: str | None, command: str) -> str | None:
    """The command in the runs' container image, with the checkout mounted as the working directory."""
    if not image:
        return None
    return f'podman run --rm --gpus all -v "$PWD:/work" -w /work {shlex.quote(image)} {command}'


@dataclass
class Change:
    file_name: str  # train_gpt.diff (the injected script) | command.diff (the training command)
    diff: str
    changed: list[tuple[str, Any, Any]]  # (parameter, baseline value, variant value)
    unchanged: list[tuple[str, Any]]
    baseline: str  # what the diff is against


def variant_change(spec: StudySpec, study: str, params: dict[str, Any], baseline: dict[str, Any] | None,
                   injected: str | None = None, baseline_text: str = "the baseline") -> Change:
    own = {n: params.get(n) for n in spec.parameters}
    base = None if baseline is None else {n: baseline.get(n) for n in spec.parameters}
    names = spec.all_names()
    changed, unchanged = [], []
    if base is not None and all(v is not None for v in base.values()):
        full_base, full_own = resolve_values(spec, base), resolve_values(spec, own)
        for n in names:
            if full_base.get(n) == full_own.get(n):
                unchanged.append((n, full_own.get(n)))
            else:
                changed.append((n, full_base.get(n), full_own.get(n)))
    if injected:
        return Change("train_gpt.diff", injected if injected.endswith("\n") else injected + "\n", changed, unchanged,
                      "the unmodified script")
    if base is None:
        diff = "".join(difflib.unified_diff([], command_lines(spec, study, own), "baseline (none recorded)", "variant"))
        return Change("command.diff", diff, changed, unchanged, "no baseline recorded")
    before = (command_lines(spec, study, own, unmodified=True) if any(v is None for v in base.values())
              else command_lines(spec, study, base))
    diff = "".join(difflib.unified_diff(before, command_lines(spec, study, own), "baseline", "variant"))
    return Change("command.diff", diff, changed, unchanged, baseline_text)
