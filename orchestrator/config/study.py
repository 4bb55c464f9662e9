"""Study definitions (`studies/*.yaml`): typed models and the checks done before anything runs.

A study says what to run (trainer command, log format), what to search (parameters, derived
parameters, how each value reaches the job), what to optimise (objective and constraints), how to
search (sampler), and how much (budget, repeats, timeout, retries). See studies/demo.yaml.
"""

from __future__ import annotations

import math
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError
from .expressions import ExpressionError, ExpressionTooCostly, evaluate, names_in, parse_expression
from .images import IMAGE_FIX, image_reference_problem
from .validation import FIX_MARK, validate_doc
from .yaml_source import YamlDoc, load_yaml_file, load_yaml_text

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
ENV_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FLAG_PATTERN = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: names every template may use besides the parameters
BUILTIN_TEMPLATE_NAMES = frozenset({"trial", "repeat", "seed", "study"})
SAMPLERS = ("random", "grid", "tpe", "gp", "frontier", "bisection")
#: the largest magnitude of a bound, step, min or max (far beyond any training setting; keeps spans finite)
MAX_BOUND = 1e15
#: the most points a grid study may span (the grid sampler lists every point when it is built)
MAX_GRID_POINTS = 1_000_000
MAX_CHOICES = 10_000
DEFAULT_STALL_S = 900.0
#: width and precision of a format spec (`{x:1000000000f}` would build a gigabyte string per trial)
MAX_FORMAT_WIDTH = 64


class _Strict(BaseModel):
    # .nan, .inf and numbers beyond a float (1e400) are refused by every float field
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _real_number(value: Any) -> Any:
    """A bound or step: a number, not `true` (which pydantic would read as 1.0)."""
    if isinstance(value, bool):
        raise bad(f"expected a number, got {value!r}", "write a number, e.g. 0.25")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(f"expected a finite number, got {value!r}", "write a finite number (not .nan or .inf)")
    return value


def _within_bound(name: str, value: float | None) -> None:
    if value is not None and abs(value) > MAX_BOUND:
        raise bad(f"{name} {value:g} is beyond ±{MAX_BOUND:g}", f"use a {name} within ±{MAX_BOUND:g} (rescale the "
                  "parameter, e.g. search its log10)")


class Parameter(_Strict):
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[str | int | float | bool] | None = None
    flag: str | None = None
    env: str | None = None
    format: str | None = None  # Python format spec for the value, e.g. ".4f"

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return _real_number(value)

    @field_validator("choices", mode="before")
    @classmethod
    def _choices(cls, choices: Any) -> Any:
        if not isinstance(choices, list):
            return choices
        if len(choices) > MAX_CHOICES:
            raise bad(f"{len(choices)} choices, more than the {MAX_CHOICES} allowed", "list fewer choices")
        for choice in choices:
            if isinstance(choice, float) and not math.isfinite(choice):
                raise bad(f"choice {choice!r} is not a finite number", "remove it, or quote it to pass it as text")
            if isinstance(choice, str) and "\x00" in choice:
                raise bad(f"choice {choice!r} contains a NUL byte, which no argv or environment can carry", "remove it")
            if not isinstance(choice, (str, int, float, bool)):
                raise bad(f"choice {choice!r} is a {type(choice).__name__}", "use text, numbers or true/false")
        seen: set = set()
        for choice in choices:
            key = (type(choice), choice)
            if key in seen:
                raise bad(f"choice {choice!r} is listed twice", "list each choice once")
            seen.add(key)
        return choices

    @model_validator(mode="after")
    def _check(self) -> "Parameter":
        if self.type == "categorical":
            if not self.choices:
                raise bad("a categorical parameter needs choices", "add `choices: [a, b]`")
            if self.low is not None or self.high is not None:
                raise bad("a categorical parameter takes no low/high", "remove low/high, list `choices:`")
            if self.step is not None or self.log:
                raise bad("a categorical parameter takes no step or log", "remove step/log, list `choices:`")
        else:
            if self.choices is not None:
                raise bad(f"a {self.type} parameter takes no choices", "remove `choices:`, or use type: categorical")
            if self.low is None or self.high is None:
                raise bad(f"a {self.type} parameter needs a range", "add `low:` and `high:`")
            for name in ("low", "high", "step"):
                _within_bound(name, getattr(self, name))
            if self.low >= self.high:
                raise bad(f"range is empty: low ({self.low:g}) >= high ({self.high:g})", "make low smaller than high")
            if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
                raise bad("an int parameter needs integer bounds", "write whole numbers for low and high, or use type: float")
            if self.step is not None and self.step <= 0:
                raise bad(f"step must be positive, got {self.step:g}", "use a step like 0.01")
            if self.type == "int" and self.step is not None and self.step != int(self.step):
                raise bad(f"an int parameter needs a whole step, got {self.step:g}",
                          f"use step: {max(1, round(self.step))}, or type: float")
            if self.step is not None and self.step > self.high - self.low:
                raise bad(f"step {self.step:g} is larger than the range {self.low:g}..{self.high:g}",
                          "use a smaller step, or widen the range")
            if self.step is not None:
                spans = (self.high - self.low) / self.step
                if abs(spans - round(spans)) > 1e-6:
                    fixed = self.low + int(spans) * self.step
                    raise bad(f"range {self.low:g}..{self.high:g} is not a whole number of steps of {self.step:g}",
                              f"set high to {fixed:.10g}")
            if self.log and self.low <= 0:
                raise bad("a log-scale parameter needs low > 0", "raise low above 0 or drop `log: true`")
            if self.log and self.step is not None:
                raise bad("log: true and step cannot be combined", "drop one of them")
        if self.flag is not None and not FLAG_PATTERN.match(self.flag):
            raise bad(f"{self.flag!r} is not a command-line flag", "write it like --name")
        if self.env is not None and not ENV_PATTERN.match(self.env):
            raise bad(f"{self.env!r} is not an environment variable name", "use letters, digits and _")
        if self.format is not None:
            _check_format_spec(self.format)
        return self

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in (self.choices or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and value != int(value):
            return False
        return self.low - 1e-12 <= value <= self.high + 1e-12


class Derived(_Strict):
    expr: str
    min: float | None = None
    max: float | None = None
    flag: str | None = None
    env: str | None = None
    format: str | None = None

    @field_validator("min", "max", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return _real_number(value)

    @field_validator("expr")
    @classmethod
    def _parse(cls, expr: str) -> str:
        try:
            parse_expression(expr)
        except ExpressionTooCostly as exc:
            raise bad(str(exc), "write a short arithmetic expression over parameter names, e.g. 1 - stage1 - stage2") from None
        except ExpressionError as exc:
            raise bad(str(exc), "write arithmetic over parameter names, e.g. 1 - stage1 - stage2") from None
        return expr

    @model_validator(mode="after")
    def _check(self) -> "Derived":
        _within_bound("min", self.min)
        _within_bound("max", self.max)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise bad(f"min ({self.min:g}) is above max ({self.max:g}): no value can pass",
                      "swap them, or make min smaller than max")
        if self.flag is not None and not FLAG_PATTERN.match(self.flag):
            raise bad(f"{self.flag!r} is not a command-line flag", "write it like --name")
        if self.env is not None and not ENV_PATTERN.match(self.env):
            raise bad(f"{self.env!r} is not an environment variable name", "use letters, digits and _")
        if self.format is not None:
            _check_format_spec(self.format)
        return self


class Inject(_Strict):
    """How parameters reach a trainer that takes them its own way (orchestrator/injection)."""

    name: str  # modded-nanogpt | parameter-golf | nanochat
    options: dict[str, Any] = Field(default_factory=dict)  # e.g. {script: path/to/train_gpt.py}; paths relative to the study file
    map: dict[str, str] = Field(default_factory=dict)  # study name -> the injector's name, e.g. stage1: "stages[0].duration"


class _Templates(_Strict):
    """argv elements (`flags`) and env vars (`env`) built from templates; the names are checked here."""

    flags: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("flags")
    @classmethod
    def _flag_names(cls, flags: dict[str, str]) -> dict[str, str]:
        for flag in flags:
            if not FLAG_PATTERN.match(flag):
                raise bad(f"{flag!r} is not a command-line flag", "write it like --name")
        return flags

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not ENV_PATTERN.match(name):
                raise bad(f"{name!r} is not an environment variable name", "use letters, digits and _")
        return env


class EarlyExit(_Templates):
    """How the trainer is told to stop at the target (`orch study early-exit`): flags / env vars built from
    templates over `{target}`, `{max_steps}`, the parameters and the builtins. Absent for the `orch` log format
    (our trainer): `--early-exit-at {target}` and `--max-steps {max_steps}`."""

    @model_validator(mode="after")
    def _says_something(self) -> "EarlyExit":
        if not self.flags and not self.env:
            raise bad("early_exit tells the trainer nothing", "add `flags:` or `env:` templates using {target} "
                      "and {max_steps}, e.g. flags: {--early-exit-at: \"{target}\", --max-steps: \"{max_steps}\"}")
        return self


#: how our own trainer (log format `orch`) is told to exit at the target (docs/contracts.md)
DEFAULT_EARLY_EXIT = EarlyExit(flags={"--early-exit-at": "{target}", "--max-steps": "{max_steps}"})
EARLY_EXIT_TEMPLATE_NAMES = frozenset({"target", "max_steps"})


class StepCount(_Templates):
    """How the trainer is told its step count (`orch study step-cut` runs the baseline with fewer steps): flags /
    env vars built from templates over `{steps}`, the parameters and the builtins, appended after the study's own
    arguments (so they win), e.g. `flags: {--num-steps: "{steps}"}` or `env: {ITERATIONS: "{steps}"}`."""

    @model_validator(mode="after")
    def _says_something(self) -> "StepCount":
        if not self.flags and not self.env:
            raise bad("steps tells the trainer nothing", "add `flags:` or `env:` templates using {steps}, e.g. "
                      "flags: {--num-steps: \"{steps}\"}")
        return self


STEP_TEMPLATE_NAMES = frozenset({"steps"})


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _relative_name(value: str, what: str) -> str:
    """A path inside the trial directory: relative, `/`-separated, no `..`, nothing a shell or a glob reads."""
    parts = value.split("/")
    if (not value or value.startswith("/") or any(p in ("", ".", "..") for p in parts)
            or not re.match(r"^[A-Za-z0-9_.+/-]+$", value)):
        raise bad(f"{what} {value!r} is not a relative path inside the trial directory",
                  "write a path like data or data/fineweb10B (letters, digits, . _ + - and /; no `..`)")
    return value


class DataFile(_Strict):
    """One file of a study's data: where it is on the controller's host, and its checksum."""

    path: str  # relative to the study file's directory
    sha256: str  # 64 lower-case hex digits (`sha256sum FILE`)
    name: str | None = None  # its path under `data.link` in the trial directory (default: the file's name)

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise bad(f"sha256 {value!r} is not 64 lower-case hex digits", "paste the digest `sha256sum FILE` prints")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _relative_name(value, "name")


class DataSpec(_Strict):
    """The data a study's trainer reads (orchestrator/warm): staged once per machine into its workdir, checked
    against the checksums before every trial, and linked into each trial directory under `link`. Either `files`
    (each with its sha256) or `manifest` (a `sha256sum` file: `DIGEST  PATH` lines, PATH relative to the manifest's
    folder and also the file's path under `link`)."""

    files: list[DataFile] = Field(default_factory=list)
    manifest: str | None = None  # relative to the study file's directory
    link: str = "data"  # the folder in the trial directory the files appear in (the trainer's working directory)

    @field_validator("link")
    @classmethod
    def _link(cls, value: str) -> str:
        return _relative_name(value, "link")

    @model_validator(mode="after")
    def _one_source(self) -> "DataSpec":
        if bool(self.files) == bool(self.manifest):
            raise bad("data needs exactly one of `files:` and `manifest:`",
                      "list the files with their sha256, or name a sha256sum manifest file")
        names = [f.name or f.path.replace("\\", "/").rsplit("/", 1)[-1] for f in self.files]
        for name in names:
            _relative_name(name, "file name")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise bad(f"two data files are both {dup!r} in the trial directory", "give one of them `name:`")
        return self


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_PYTHON_COMMAND = re.compile(r"^(\{python\}|(.*/)?python[0-9.]*)$")


class ForkServer(_Strict):
    """`trainer.fork_server`: a process per machine imports `preload` once (never touching a GPU) and starts each
    trial's trainer by fork, so a warm machine stops paying those imports per trial (orchestrator/warm/forkserver.py).
    For a `python -m MODULE`, `python SCRIPT` or single-node `torchrun` command outside a container; the trainer
    must not need its own code to set, before its first import of a preloaded library, a variable that library
    reads at import (set it in `trainer.env` instead: those variables key the server)."""

    #: torch, its compiler front end and Inductor's utilities: 7.9 s of a GPU trial's start (docs/fleet.md). Not
    #: torch._inductor.compile_fx: importing it opens the CUDA driver on a GPU machine (an H100, torch 2.11), and a
    #: server that did is refused (a forked trainer could not rely on the GPU)
    preload: list[str] = Field(default_factory=lambda: ["torch", "torch._dynamo", "torch._inductor.utils"],
                               min_length=1)
    idle_s: float = Field(default=900.0, gt=0)  # the server exits after this long without a running trainer

    @field_validator("preload")
    @classmethod
    def _modules(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _MODULE.match(name):
                raise bad(f"{name!r} is not a module name", "list importable modules, e.g. torch, torch._dynamo")
        return names


class Trainer(_Strict):
    command: list[str] = Field(min_length=1)
    inject: Inject | None = None
    log_format: str = "orch"
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: list[str] = Field(default_factory=list)  # taken from the controller's env, never stored
    code_dir: str = "."  # relative to the study file's directory; its git revision is recorded
    files: list[str] = Field(default_factory=list)  # globs under code_dir, checksummed on each trial
    image: str | None = None  # overrides the machine's container image
    early_exit: EarlyExit | None = None  # how `orch study early-exit` tells the trainer; default for log_format orch
    steps: StepCount | None = None  # how `orch study step-cut` tells the trainer its step count
    #: per-machine compile caches kept across trials (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, ... under the
    #: machine's workdir, keyed by the training files' checksums and the library versions; orchestrator/warm)
    warm: bool = True
    data: DataSpec | None = None  # the data its trainer reads, staged once per machine (orchestrator/warm)
    fork_server: ForkServer | None = None  # off unless set (`fork_server: {}` takes the defaults)

    @model_validator(mode="after")
    def _forkable(self) -> "Trainer":
        if self.fork_server is None:
            return self
        if not self.warm:
            raise bad("fork_server needs warm machines (it runs beside their caches)",
                      "remove `warm: false`, or remove `fork_server`")
        rest = [a for a in self.command[1:] if a != "-u"]
        script = bool(rest) and not rest[0].startswith("-") and not rest[0].startswith("{")
        torchrun = self.command[0].rsplit("/", 1)[-1] == "torchrun"
        if not torchrun and (not _PYTHON_COMMAND.match(self.command[0])
                             or not ((len(rest) >= 2 and rest[0] == "-m") or script)):
            raise bad(f"fork_server starts `python -m MODULE ...`, `python SCRIPT ...` or a single-node `torchrun`, "
                      f"not {self.command[:3]}",
                      "start the trainer as `{python} -m MODULE`, `{python} SCRIPT` or `torchrun --standalone "
                      "--nproc-per-node N SCRIPT`, or remove `fork_server`")
        return self

    @field_validator("image")
    @classmethod
    def _image_reference(cls, image: str | None) -> str | None:
        if image is not None:
            problem = image_reference_problem(image)
            if problem:
                raise bad(problem, IMAGE_FIX)
        return image

    @field_validator("secret_env")
    @classmethod
    def _env_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not ENV_PATTERN.match(name):
                raise bad(f"{name!r} is not an environment variable name", "use letters, digits and _")
        return names


class Arguments(_Templates):
    """argv elements and env vars built from templates over parameter values (`{stage1:.3f}`)."""


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


class Constraint(BaseModel):
    metric: str
    op: Literal["<=", ">="]
    threshold: float

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 when satisfied."""
        return value - self.threshold if self.op == "<=" else self.threshold - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


class Objective(_Strict):
    minimize: str | None = None
    maximize: str | None = None
    subject_to: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_direction(self) -> "Objective":
        if (self.minimize is None) == (self.maximize is None):
            raise bad("the objective needs exactly one direction", "give one of `minimize: METRIC` or `maximize: METRIC`")
        for text in self.subject_to:
            match = _CONSTRAINT.match(text)
            if not match:
                raise bad(f"constraint {text!r} is malformed", "write `METRIC <= NUMBER` or `METRIC >= NUMBER`")
            try:
                threshold = float(match.group(3))
            except ValueError:
                raise bad(f"constraint {text!r}: {match.group(3)!r} is not a number",
                          "write the threshold as one number, e.g. `val_loss <= 3.28`") from None
            if not math.isfinite(threshold) or abs(threshold) > MAX_BOUND:
                raise bad(f"constraint {text!r}: the threshold {match.group(3)} is not a finite number within "
                          f"±{MAX_BOUND:g}", "write a number like 3.28")
        return self

    @property
    def metric(self) -> str:
        return self.minimize or self.maximize  # type: ignore[return-value]

    @property
    def direction(self) -> str:
        return "minimize" if self.minimize else "maximize"

    @property
    def constraints(self) -> list[Constraint]:
        out = []
        for text in self.subject_to:
            metric, op, number = _CONSTRAINT.match(text).groups()  # type: ignore[union-attr]
            out.append(Constraint(metric=metric, op=op, threshold=float(number)))
        return out


class Sampler(_Strict):
    name: Literal["random", "grid", "tpe", "gp", "frontier", "bisection"] = "tpe"
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)  # numpy's seed range
    options: dict[str, Any] = Field(default_factory=dict)


class Budget(_Strict):
    max_trials: int = Field(ge=1, le=1_000_000)
    parallel: int | None = Field(default=None, ge=1, le=100_000)  # cap on trials at once; default: every free slot
    # rounds: wait until a round's trials have all ended, then dispatch the next round on every free slot
    # (how record teams search, and what k-section samplers expect); continuous: fill each slot as it frees
    dispatch: Literal["rounds", "continuous"] = "rounds"


class OnFailure(_Strict):
    """How a trial that failed by itself (not by a machine or controller fault) reaches the sampler:
    `fail` (Optuna FAIL with its exit reason: a sampler that reads exit reasons, the frontier sampler, takes it
    as evidence; Optuna's own samplers ignore the point), `infeasible` (a complete trial violating every
    constraint: any constrained sampler learns to avoid the region), `retry` (re-run with the same values, at
    most `retries` times; the row says `retry_of`), or `auto` (the default: `fail` for the frontier sampler and
    for a study without constraints, `infeasible` otherwise, so the failure is information to every sampler)."""

    diverged: Literal["auto", "fail", "infeasible", "retry"] = "auto"  # the trainer reported a non-finite loss
    crashed: Literal["auto", "fail", "infeasible", "retry"] = "auto"  # it ended without its final line


class Resources(_Strict):
    gpus: int = Field(default=0, ge=0, le=4096)  # per trial; 0 = a CPU slot
    labels: dict[str, str] = Field(default_factory=dict)


class Scheduling(_Strict):
    """How the study shares its fleet with other studies (orchestrator/claims; docs/fleet.md, Sharing a fleet): a
    higher `priority` gets the next free slot first; studies of equal priority share by GPU-seconds used recently;
    `max_gpus` caps the GPUs it holds at once."""

    priority: int = Field(default=0, ge=-1000, le=1000)
    max_gpus: int | None = Field(default=None, ge=1, le=1_000_000)


class StudySpec(_Strict):
    description: str = ""
    trainer: Trainer
    parameters: dict[str, Parameter] = Field(min_length=1)
    derived: dict[str, Derived] = Field(default_factory=dict)
    arguments: Arguments = Field(default_factory=Arguments)
    objective: Objective
    sampler: Sampler = Field(default_factory=Sampler)
    budget: Budget
    repeats: int = Field(default=1, ge=1, le=1000)
    timeout_s: float = Field(default=3600, gt=0, le=366 * 86400)  # a longer timeout overflows the waits' timeouts
    retries: int = Field(default=2, ge=0, le=100)  # re-runs of a trial lost to a machine or controller failure
    #: the progress watchdog: a running trial whose log gains no line for this long is killed and recorded `hung`
    #: (a lost trial, re-run on another machine while `retries` remain); null turns it off. The default outlasts a
    #: cold torch.compile of a record-sized script, which prints nothing for minutes (7.8 min on an H100 machine).
    stall_s: float | None = Field(default=DEFAULT_STALL_S, ge=1, le=366 * 86400)
    on_failure: OnFailure = Field(default_factory=OnFailure)
    resources: Resources = Field(default_factory=Resources)
    scheduling: Scheduling = Field(default_factory=Scheduling)

    def all_names(self) -> list[str]:
        return [*self.parameters, *self.derived]


def bad(problem: str, fix: str) -> ValueError:
    return ValueError(f"{problem}{FIX_MARK}{fix}")


def _check_format_spec(spec: str) -> None:
    numbers = [int(n) for n in re.findall(r"[0-9]+", spec)]
    if len(spec) > 32 or any(n > MAX_FORMAT_WIDTH for n in numbers):
        raise bad(f"format {spec!r} asks for a width or precision above {MAX_FORMAT_WIDTH}", "use a spec like .4f or 8.3g")
    try:
        format(1.5, spec)
    except ValueError as exc:
        raise bad(f"format {spec!r} is not a Python format spec ({exc})", "use a spec like .4f or g") from None


def template_fields(template: str) -> list[tuple[str, str]]:
    """(name, format_spec) pairs of a `{name:spec}` template; raises ValueError on anything else."""
    out = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) or conversion:
            raise ValueError(f"template field {{{name}}} must be a plain parameter name")
        out.append((name, spec or ""))
    return out


#: names a parameter may not take: the templates' built-in values would shadow it
RESERVED_NAMES = BUILTIN_TEMPLATE_NAMES | frozenset({"target", "max_steps"})


def _cross_checks(spec: StudySpec, doc: YamlDoc) -> None:
    names = set(spec.parameters)
    for pname in spec.parameters:
        if not re.match(NAME_PATTERN, pname):
            raise doc.error(("parameters", pname), f"parameter name {pname!r} is not an identifier", fix="use letters, digits and _")
        if pname in RESERVED_NAMES:
            raise doc.error(("parameters", pname), f"parameter name {pname!r} is a built-in template value (one of "
                            f"{', '.join(sorted(RESERVED_NAMES))}), which would shadow it in every template",
                            fix=f"rename the parameter, e.g. {pname}_value")
    # derived parameters may use parameters and earlier derived ones
    for dname, derived in spec.derived.items():
        if not re.match(NAME_PATTERN, dname):
            raise doc.error(("derived", dname), f"derived name {dname!r} is not an identifier", fix="use letters, digits and _")
        if dname in names or dname in RESERVED_NAMES:
            raise doc.error(("derived", dname), f"name {dname!r} is already used"
                            + (" by a built-in template value" if dname in RESERVED_NAMES else ""),
                            fix="rename the derived parameter")
        unknown = sorted(names_in(parse_expression(derived.expr)) - names)
        if unknown:
            raise doc.error(("derived", dname, "expr"), f"references unknown name {unknown[0]!r}",
                            fix=f"use one of the parameters defined above it: {', '.join(sorted(names))}")
        names.add(dname)
    _check_derived_values(spec, doc)
    _check_templates(spec.arguments, ("arguments",), names, doc)
    if spec.trainer.early_exit is not None:
        _check_templates(spec.trainer.early_exit, ("trainer", "early_exit"), names | EARLY_EXIT_TEMPLATE_NAMES, doc)
    if spec.trainer.steps is not None:
        _check_templates(spec.trainer.steps, ("trainer", "steps"), names | STEP_TEMPLATE_NAMES, doc)
    for section, key in (("trainer", "env"),):
        for env_name in getattr(spec.trainer, key):
            if not ENV_PATTERN.match(env_name):
                raise doc.error((section, key, env_name), f"{env_name!r} is not a valid environment variable name", fix="use letters, digits and _")
    if spec.trainer.inject is not None:
        from ..injection import INJECTORS

        inject = spec.trainer.inject
        if inject.name not in INJECTORS:
            raise doc.error(("trainer", "inject", "name"), f"unknown injector {inject.name!r}",
                            fix=f"use one of {', '.join(sorted(INJECTORS))}")
        for source in inject.map:
            if source not in names:
                raise doc.error(("trainer", "inject", "map", source), f"maps unknown name {source!r}",
                                fix=f"map a parameter or derived name: {', '.join(sorted(names))}")
    if spec.sampler.name == "grid":
        points = 1
        for pname, param in spec.parameters.items():
            if param.type == "float" and param.step is None:
                raise doc.error(("parameters", pname), "the grid sampler needs a `step:` for float parameters",
                                fix="add `step: 0.01` (or use another sampler)")
            points *= len(param.choices or []) if param.type == "categorical" else \
                int(round((param.high - param.low) / (param.step or 1))) + 1
            if points > MAX_GRID_POINTS:
                raise doc.error(("parameters", pname), f"the grid spans more than {MAX_GRID_POINTS} points",
                                fix="use larger steps or fewer parameters (or another sampler)")
    for kind in ("diverged", "crashed"):
        if getattr(spec.on_failure, kind) == "infeasible" and not spec.objective.constraints:
            raise doc.error(("on_failure", kind), "`infeasible` needs a constraint for the failed trial to violate",
                            fix="add `subject_to: [\"METRIC <= X\"]` under objective, or use `fail` or `retry`")
    if "stall_s" in spec.model_fields_set and spec.stall_s is not None and spec.stall_s >= spec.timeout_s:
        raise doc.error(("stall_s",), f"stall_s ({spec.stall_s:g} s) is not below timeout_s ({spec.timeout_s:g} s): the "
                        "watchdog would never fire before the timeout",
                        fix="lower stall_s below timeout_s (it is the longest a trial may print nothing), or remove it")
    cap = spec.scheduling.max_gpus
    if cap is not None and spec.resources.gpus == 0:
        raise doc.error(("scheduling", "max_gpus"), "max_gpus caps GPUs, but the study's trials run on CPU slots "
                        "(resources.gpus is 0)", fix="remove max_gpus, or cap the trials at once with budget.parallel")
    if cap is not None and cap < spec.resources.gpus:
        raise doc.error(("scheduling", "max_gpus"), f"max_gpus ({cap}) is below the {spec.resources.gpus} GPUs one "
                        "trial asks for (resources.gpus): no trial could ever start",
                        fix=f"raise max_gpus to at least {spec.resources.gpus}, or remove it")
    if spec.budget.parallel is not None and spec.budget.parallel > spec.budget.max_trials:
        raise doc.error(("budget", "parallel"), f"parallel ({spec.budget.parallel}) exceeds max_trials ({spec.budget.max_trials})",
                        fix="lower parallel or raise max_trials")


def _probe_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Low, middle and high of every parameter (the first, middle and last choice)."""
    points = []
    for where in (0.0, 0.5, 1.0):
        point: dict[str, Any] = {}
        for name, p in spec.parameters.items():
            if p.type == "categorical":
                choices = p.choices or [0]
                point[name] = choices[int(where * (len(choices) - 1))]
            else:
                value = p.low + where * (p.high - p.low)
                point[name] = round(value) if p.type == "int" else value
        points.append(point)
    return points


def _check_derived_values(spec: StudySpec, doc: YamlDoc) -> None:
    """Evaluate each derived expression at a few points of the space: one that is too costly anywhere (a huge
    power, an overflow) or fails at every point is refused here instead of invalidating every trial."""
    if not spec.derived:
        return
    points = _probe_points(spec)
    for dname, derived in spec.derived.items():
        tree = parse_expression(derived.expr)
        failures = []
        for point in points:
            try:
                point[dname] = evaluate(tree, point)
            except ExpressionTooCostly as exc:
                raise doc.error(("derived", dname, "expr"), f"{exc} (at {_show(point, spec)})",
                                fix="keep powers and products of parameters small") from None
            except ExpressionError as exc:
                failures.append(f"{exc} (at {_show(point, spec)})")
                point[dname] = 0.0
        if len(failures) == len(points):
            raise doc.error(("derived", dname, "expr"), f"cannot be computed anywhere in the search space: {failures[0]}",
                            fix="check the arithmetic (division by zero, log or sqrt of a negative number)")


def _show(point: dict[str, Any], spec: StudySpec) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in point.items()
                     if k in spec.parameters)


def _check_templates(templates: Arguments | _Templates, path: tuple, names: set[str], doc: YamlDoc) -> None:
    for section in ("flags", "env"):
        for key, template in getattr(templates, section).items():
            where = (*path, section, key)
            try:
                fields = template_fields(template)
            except ValueError as exc:
                raise doc.error(where, str(exc), fix="write {name} or {name:.4f}") from None
            for name, fmt in fields:
                if name not in names and name not in BUILTIN_TEMPLATE_NAMES:
                    raise doc.error(where, f"template references unknown name {name!r}",
                                    fix=f"use one of {', '.join(sorted(names | BUILTIN_TEMPLATE_NAMES))}")
                if fmt:
                    try:
                        _check_format_spec(fmt)
                    except ValueError as exc:
                        problem, _, fix = str(exc).partition(FIX_MARK)
                        raise doc.error(where, problem, fix=fix) from None


def early_exit_templates(spec: StudySpec) -> EarlyExit | None:
    """The study's early-exit templates; the default for our own trainer; None when the study declares none."""
    if spec.trainer.early_exit is not None:
        return spec.trainer.early_exit
    return DEFAULT_EARLY_EXIT if spec.trainer.log_format == "orch" else None


def check_metrics(spec: StudySpec, known_metrics: frozenset[str], format_name: str, doc: YamlDoc | None = None) -> None:
    """The objective and constraint metrics must be ones the trainer's log format reports."""
    wanted = [("objective", spec.objective.direction, spec.objective.metric)]
    wanted += [("objective", "subject_to", c.metric) for c in spec.objective.constraints]
    for *path, metric in wanted:
        if metric not in known_metrics:
            message = f"metric {metric!r} is never printed by the {format_name!r} log format"
            fix = f"use one of {', '.join(sorted(known_metrics))}"
            if doc is not None:
                raise doc.error(tuple(path), message, fix=fix)
            raise ConfigError(message, field=".".join(path), fix=fix)


def parse_study(doc: YamlDoc) -> StudySpec:
    spec = validate_doc(StudySpec, doc)
    _cross_checks(spec, doc)
    return spec


def load_study_file(path: str | Path) -> tuple[StudySpec, YamlDoc]:
    doc = load_yaml_file(path)
    return parse_study(doc), doc


def load_study_text(text: str, file: str = "<study>") -> tuple[StudySpec, YamlDoc]:
    doc = load_yaml_text(text, file)
    return parse_study(doc), doc
