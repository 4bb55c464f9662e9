"""The sampler a study names, checked at `orch study create`: built through the sampler registry
(`orchestrator.samplers.build_sampler`, which knows every sampler's options), then asked for two points of the
study's space on a throw-away in-memory Optuna study. An option of the wrong type that the sampler's
constructor stores without looking at it (`n_startup_trials: ten`) fails here, at create, not in the first
`orch study run`. No option is listed here: the sampler itself is the judge."""

from __future__ import annotations

import warnings

from ..config.errors import ConfigError
from ..config.study import StudySpec
from ..config.yaml_source import YamlDoc

DRY_RUN_TRIALS = 2


def check_sampler(spec: StudySpec, doc: YamlDoc) -> None:
    import optuna

    from . import build_sampler, distributions

    where = ("sampler", "options") if spec.sampler.options else ("sampler",)
    fix = "check each option's name, type and value against the sampler (docs/search.md)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's deprecation warnings of an option are not the user's error
        try:
            sampler = build_sampler(spec)
        except ConfigError as exc:
            raise doc.error(_path(exc.field), exc.detail, fix=exc.fix) from None
        except Exception as exc:  # noqa: BLE001 - whatever a sampler raises for a bad option
            raise doc.error(where, f"the {spec.sampler.name} sampler refuses its options: {_describe(exc)}", fix=fix) from None
    try:
        dists = distributions(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(sampler=sampler, direction=spec.objective.direction,
                                        storage=optuna.storages.InMemoryStorage())
            study.stop = lambda: None  # a grid sampler stops the study once its grid is used up: no loop here to stop
            for index in range(DRY_RUN_TRIALS):
                trial = study.ask(dists)
                study.tell(trial, float(index + 1))
    except ConfigError as exc:
        raise doc.error(_path(exc.field) if exc.field else where, exc.detail, fix=exc.fix or fix) from None
    except Exception as exc:  # noqa: BLE001
        raise doc.error(where, f"the {spec.sampler.name} sampler fails when asked for a point with these options: "
                        f"{_describe(exc)}", fix=fix) from None


def _path(field: str | None) -> tuple:
    """A ConfigError's dotted field (`sampler.options.alpha`) as a document path, for its line."""
    return tuple(field.split(".")) if field else ("sampler",)


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
