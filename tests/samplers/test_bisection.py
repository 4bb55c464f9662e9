"""BisectionSampler: convergence, k-section, resume from storage, coordinates, fallback."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import optuna
import pytest

from orchestrator.samplers.bisection import ATTR_PHASE
from orchestrator.samplers.bisection import BisectionSampler


optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

S1 = {"name": "stage1", "low": 0.25, "high": 0.5, "step": 0.01}


def _sampler(**kw) -> BisectionSampler:
    args = dict(coordinates=[S1], constraint_key="val_loss", threshold=3.28, noise_std=0.002,
                tolerance=0.02, seed=0)
    args.update(kw)
    return BisectionSampler(**args)


def _round(study, k, margin_fn, rng=None, extra=None):
    """Ask k trials before telling any (a controller filling k machines); returns the trials."""
    trials = [study.ask() for _ in range(k)]
    points = []
    for t in trials:
        s1 = t.suggest_float("stage1", 0.25, 0.5, step=0.01)
        p = {"stage1": s1}
        if extra:
            p.update(extra(t))
        points.append(p)
    for t, p in zip(trials, points):
        m = margin_fn(p) + (rng.normal(0, 0.002) if rng is not None else 0.0)
        t.set_constraint("val_loss", m)
        study.tell(t, 60.0 - 20.0 * p["stage1"])
    return points


def _line(x0: float, slope: float = 0.1):
    return lambda p: slope * (p["stage1"] - x0)


def test_noiseless_1d_converges_to_boundary() -> None:
    sampler = _sampler()
    study = optuna.create_study(sampler=sampler)
    for _ in range(12):
        _round(study, 4, _line(0.373))
        if sampler.is_converged(study):
            break
    assert sampler.is_converged(study)
    (c,) = sampler.boundary_estimate(study)["coordinates"]
    assert c["status"] in ("frozen", "converged")
    assert 0.373 - 0.02 <= c["recommended"] <= 0.373  # feasible and within tolerance
    assert c["interval"][0] <= 0.373 <= c["interval"][1]
    assert c["interval_width"] <= 0.02
    assert len(study.trials) <= 32


@pytest.mark.parametrize("seed", range(6))
def test_noisy_1d_converges_within_tolerance(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x0 = 0.30 + 0.15 * rng.random()
    sampler = _sampler()
    study = optuna.create_study(sampler=sampler)
    for _ in range(15):
        _round(study, 4, _line(x0), rng)
        if sampler.is_converged(study):
            break
    assert sampler.is_converged(study), "did not converge in 60 trials"
    (c,) = sampler.boundary_estimate(study)["coordinates"]
    assert abs(c["boundary"] - x0) <= 0.02
    # the recommendation is feasible (mean margin <= 0) or at most half a step past it
    assert c["recommended"] <= x0 + 0.005
    assert c["recommended"] >= x0 - 0.04
    # noise-aware: some points were run more than once
    values = [t.params["stage1"] for t in study.trials]
    assert len(set(values)) < len(values)


@pytest.mark.parametrize("k", range(1, 9))
def test_k_section_gives_k_distinct_points_per_round(k: int) -> None:
    rng = np.random.default_rng(k)
    sampler = _sampler()
    study = optuna.create_study(sampler=sampler)
    first_round = None
    for r in range(4):
        if sampler.is_converged(study):  # then it repeats the final point (confirmation runs)
            break
        points = _round(study, k, _line(0.41), rng)
        xs = [p["stage1"] for p in points]
        assert len(set(xs)) == k, f"round {r}: {xs}"
        if first_round is None:
            first_round = sorted(xs)
    if k >= 3:  # the first round spans the range, not k copies of a midpoint
        assert first_round[-1] - first_round[0] >= 0.1


def test_k_larger_than_grid_repeats_only_when_forced() -> None:
    sampler = _sampler(coordinates=[{"name": "stage1", "low": 0.3, "high": 0.35, "step": 0.01}])
    study = optuna.create_study(sampler=sampler)
    trials = [study.ask() for _ in range(8)]
    xs = [t.suggest_float("stage1", 0.25, 0.5, step=0.01) for t in trials]
    assert len(set(xs)) == 6  # all six grid values, then repeats


def _build_two_coordinate_sampler() -> BisectionSampler:
    return BisectionSampler(
        coordinates=[
            {"name": "stage1", "low": 0.25, "high": 0.5, "step": 0.01},
            {"name": "stage3", "low": 0.28, "high": 0.4, "step": 0.01, "direction": "decrease"},
        ],
        start={"stage3": 0.36},
        constraint_key="val_loss",
        noise_std=0.002,
        tolerance=0.02,
        seed=1,
    )


def _two_d_margin(p):
    return 0.1 * (p["stage1"] - 0.36) - 0.1 * (p["stage3"] - 0.33)


def _two_d_round(study, k, rng):
    trials = [study.ask() for _ in range(k)]
    pts = [
        {"stage1": t.suggest_float("stage1", 0.25, 0.5, step=0.01),
         "stage3": t.suggest_float("stage3", 0.28, 0.4, step=0.01)}
        for t in trials
    ]
    for t, p in zip(trials, pts):
        t.set_constraint("val_loss", _two_d_margin(p) + rng.normal(0, 0.002))
        study.tell(t, 60 - 20 * p["stage1"] + 20 * p["stage3"])
    return pts


def test_resume_after_restart_gives_same_next_points(tmp_path) -> None:
    rng = np.random.default_rng(3)
    path = tmp_path / "study.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    study = optuna.create_study(study_name="s", storage=storage, sampler=_build_two_coordinate_sampler())
    while study.user_attrs.get("done") is None:
        _two_d_round(study, 4, rng)
        if any(t.system_attrs.get(ATTR_PHASE) == 1 for t in study.trials):
            break
    assert any(t.system_attrs.get(ATTR_PHASE) == 1 for t in study.trials), "never reached stage3"
    in_flight = [study.ask() for _ in range(2)]  # the controller dies with 2 trials RUNNING
    for t in in_flight:
        t.suggest_float("stage1", 0.25, 0.5, step=0.01)
        t.suggest_float("stage3", 0.28, 0.4, step=0.01)
    del study
    storage.remove_session()
    storage.engine.dispose()
    copies = []
    for name in ("a.db", "b.db"):
        shutil.copy(path, tmp_path / name)
        copies.append(tmp_path / name)

    def next_points(db):
        st = optuna.storages.RDBStorage(f"sqlite:///{db}")
        sampler = _build_two_coordinate_sampler()
        s = optuna.load_study(study_name="s", storage=st, sampler=sampler)
        est = sampler.boundary_estimate(s)
        trials = [s.ask() for _ in range(3)]
        pts = [(t.suggest_float("stage1", 0.25, 0.5, step=0.01),
                t.suggest_float("stage3", 0.28, 0.4, step=0.01)) for t in trials]
        st.remove_session()
        st.engine.dispose()
        return pts, est

    pts_a, est_a = next_points(copies[0])
    pts_b, est_b = next_points(copies[1])
    assert pts_a == pts_b
    assert est_a == est_b
    # the in-flight points are not proposed again in the same round
    flight = {(t.params["stage1"], t.params["stage3"]) for t in in_flight}
    assert len(set(pts_a) | flight) == len(pts_a) + len(flight)


def test_coordinate_rounds_stage1_then_stage3() -> None:
    rng = np.random.default_rng(7)
    sampler = _build_two_coordinate_sampler()
    study = optuna.create_study(sampler=sampler)
    for _ in range(30):
        _two_d_round(study, 4, rng)
        if sampler.is_converged(study):
            break
    assert sampler.is_converged(study)
    phases = [t.system_attrs[ATTR_PHASE] for t in study.trials]
    first1 = phases.index(1)
    assert all(p == 0 for p in phases[:first1]) and phases[0] == 0
    # while stage 1 was searched, stage 3 stayed at its start value
    assert {t.params["stage3"] for t in study.trials[:first1]} == {0.36}
    est = sampler.boundary_estimate(study)
    c1, c3 = est["coordinates"]
    assert c1["status"] == "frozen" and c3["status"] in ("frozen", "converged")
    # stage 1 boundary at stage3 = 0.36 is 0.39; stage 3 boundary at the chosen stage 1
    assert 0.36 <= c1["recommended"] <= 0.39
    s3_boundary = 0.33 + (c1["recommended"] - 0.36)
    assert s3_boundary - 1e-9 <= c3["recommended"] <= s3_boundary + 0.03
    assert est["point"] == {"stage1": c1["recommended"], "stage3": c3["recommended"]}
    # after convergence the sampler proposes the final point (confirmation runs) or re-runs
    t = study.ask()
    assert t.suggest_float("stage1", 0.25, 0.5, step=0.01) <= 0.5


def test_renormalize_keeps_the_sum() -> None:
    sampler = BisectionSampler(
        coordinates=[{"name": "stage1", "low": 0.25, "high": 0.5, "renormalize": ["stage2", "stage3"]}],
        start={"stage1": 1 / 3, "stage2": 0.3, "stage3": 0.3666666666666667},
        noise_std=0.002,
        n_grid=26,
    )
    study = optuna.create_study(sampler=sampler)
    for _ in range(3):
        trials = [study.ask() for _ in range(4)]
        for t in trials:
            s = [t.suggest_float(f"stage{i}", 0.0, 1.0) for i in (1, 2, 3)]
            assert sum(s) == pytest.approx(1.0, abs=1e-12)
            assert s[1] / s[2] == pytest.approx(0.3 / 0.3666666666666667)
            t.set_constraint("c", s[0] - 0.4)
            study.tell(t, 1.0 - s[0])
    assert len({t.params["stage1"] for t in study.trials}) > 4


def test_unowned_params_fall_back_to_independent_sampler() -> None:
    def run(seed):
        sampler = _sampler(seed=seed)
        study = optuna.create_study(sampler=sampler)
        _round(study, 4, _line(0.4), extra=lambda t: {
            "lr": t.suggest_float("lr", 1e-4, 1e-2, log=True),
            "opt": t.suggest_categorical("opt", ["adam", "muon"]),
            "layers": t.suggest_int("layers", 4, 12),
        })
        return [(t.params["lr"], t.params["opt"], t.params["layers"]) for t in study.trials]

    a, b, c = run(0), run(0), run(1)
    assert a == b and a != c
    lrs = [x[0] for x in a]
    assert len(set(lrs)) == 4 and all(1e-4 <= v <= 1e-2 for v in lrs)
    assert all(4 <= x[2] <= 12 for x in a)


def test_constraints_read_like_optuna() -> None:
    # no constraint_key: the largest constraint decides; a second violated constraint counts
    sampler = BisectionSampler(coordinates=[S1], noise_std=0.002, tolerance=0.02)
    study = optuna.create_study(sampler=sampler)
    for _ in range(10):
        trials = [study.ask() for _ in range(4)]
        for t in trials:
            x = t.suggest_float("stage1", 0.25, 0.5, step=0.01)
            t.set_constraint("val_loss", 0.1 * (x - 0.45))
            t.set_constraint("memory", 0.1 * (x - 0.33))  # binds first
            study.tell(t, 1 - x)
    (c,) = sampler.boundary_estimate(study)["coordinates"]
    assert 0.31 <= c["recommended"] <= 0.33

    # raw metric in user_attrs with a threshold (no set_constraint)
    sampler = _sampler()
    study = optuna.create_study(sampler=sampler)
    for _ in range(10):
        trials = [study.ask() for _ in range(4)]
        for t in trials:
            x = t.suggest_float("stage1", 0.25, 0.5, step=0.01)
            t.set_user_attr("val_loss", 3.28 + 0.1 * (x - 0.42))
            study.tell(t, 1 - x)
    (c,) = sampler.boundary_estimate(study)["coordinates"]
    assert 0.40 <= c["recommended"] <= 0.42


def test_boundary_estimate_after_each_round() -> None:
    sampler = _sampler()
    study = optuna.create_study(sampler=sampler)
    for _ in range(3):
        _round(study, 4, _line(0.37))
    widths = [sampler.boundary_estimate(study, until_trial=n)["coordinates"][0]["interval_width"]
              for n in (4, 8, 12)]
    counts = [sampler.boundary_estimate(study, until_trial=n)["coordinates"][0]["n_trials"]
              for n in (0, 4, 8, 12)]
    assert counts == [0, 4, 8, 12]
    assert widths[2] < widths[0]


@pytest.mark.parametrize(
    "bad",
    [
        dict(coordinates=[]),
        dict(coordinates=[{"name": "a", "low": 1.0, "high": 0.5}]),
        dict(coordinates=[{"name": "a", "low": 0.0, "high": 1.0, "direction": "up"}]),
        dict(coordinates=[{"name": "a", "low": 0.0, "high": 1.0, "renormalize": ["b"]}]),
        dict(coordinates=[{"name": "a", "low": 0.0, "high": 1.0, "lo": 2}]),
        dict(coordinates=[S1], noise_std=0.0),
        dict(coordinates=[S1], likelihood="probit"),
    ],
)
def test_bad_arguments_are_rejected(bad) -> None:
    with pytest.raises(ValueError):
        BisectionSampler(**bad)


def test_changed_coordinates_on_resume_are_refused() -> None:
    storage = optuna.storages.InMemoryStorage()
    two = _build_two_coordinate_sampler()
    study = optuna.create_study(storage=storage, sampler=two)
    rng = np.random.default_rng(0)
    for _ in range(30):
        _two_d_round(study, 4, rng)
        if any(t.system_attrs.get(ATTR_PHASE) == 1 for t in study.trials):
            break
    other = BisectionSampler(coordinates=[{"name": "stage2", "low": 0.2, "high": 0.4}], noise_std=0.002)
    with pytest.raises(ValueError, match="coordinates"):
        other.boundary_estimate(optuna.load_study(study_name=study.study_name, storage=storage,
                                                  sampler=other))


def test_logistic_likelihood_uses_only_pass_fail() -> None:
    sampler = _sampler(likelihood="logistic")
    study = optuna.create_study(sampler=sampler)
    for _ in range(12):
        _round(study, 4, lambda p: 1.0 if p["stage1"] > 0.38 else -1.0)
        if sampler.is_converged(study):
            break
    (c,) = sampler.boundary_estimate(study)["coordinates"]
    assert 0.36 <= c["recommended"] <= 0.38


def _freeze_stage1(rng):
    sampler = _build_two_coordinate_sampler()
    study = optuna.create_study(sampler=sampler)
    for _ in range(30):
        _two_d_round(study, 4, rng)
        if sampler.boundary_estimate(study)["active"] == "stage3":
            break
    return sampler, study


def test_second_coordinate_reuses_runs_at_its_start_and_keeps_the_first_answer() -> None:
    sampler, study = _freeze_stage1(np.random.default_rng(11))
    est = sampler.boundary_estimate(study)
    assert est["active"] == "stage3", "stage 1 never froze"
    c1, c3 = est["coordinates"]
    on_new_line = [t for t in study.trials
                   if t.params["stage1"] == c1["recommended"] and t.params["stage3"] == 0.36]
    assert on_new_line, "the frozen stage-1 value was never run"
    phase1 = [t for t in study.trials if t.system_attrs[ATTR_PHASE] == 1]
    # the runs of the frozen stage-1 value lie where the stage-3 line starts: they count there
    assert c3["n_trials"] == len(phase1) + len(on_new_line) - sum(
        1 for t in phase1 if t in on_new_line)
    assert c3["n_trials"] > len(phase1)
    # before stage 3 has evidence against it, the answer stays at the point stage 1 settled on
    # (not at the slow conservative end of the stage-3 range)
    if c3["n_trials"] == len(on_new_line):
        assert est["point"] == {"stage1": c1["recommended"], "stage3": 0.36}
    assert c3["recommended"] <= 0.36


def test_second_coordinate_answer_never_slower_than_the_first_without_evidence() -> None:
    # noiseless: at stage1's answer the margin is <= 0, so the stage-3 answer is the start or
    # more aggressive at every round of the stage-3 search
    sampler = _build_two_coordinate_sampler()
    study = optuna.create_study(sampler=sampler)
    zero = np.random.default_rng(0)
    seen_stage3 = False
    for _ in range(20):
        trials = [study.ask() for _ in range(4)]
        for t in trials:
            p = {"stage1": t.suggest_float("stage1", 0.25, 0.5, step=0.01),
                 "stage3": t.suggest_float("stage3", 0.28, 0.4, step=0.01)}
            t.set_constraint("val_loss", _two_d_margin(p) + 0.0 * zero.normal())
            study.tell(t, 60 - 20 * p["stage1"] + 20 * p["stage3"])
        est = sampler.boundary_estimate(study)
        if est["coordinates"][0]["status"] == "frozen":
            seen_stage3 = True
            assert est["point"]["stage3"] <= 0.36
            assert _two_d_margin(est["point"]) <= 1e-12  # never an infeasible answer
        if sampler.is_converged(study):
            break
    assert seen_stage3 and sampler.is_converged(study)
    est = sampler.boundary_estimate(study)
    # the answer is the last feasible lattice point: one step further is infeasible
    assert -0.001 - 1e-12 <= _two_d_margin(est["point"]) <= 1e-12


def test_second_coordinate_starts_from_the_first_answer_not_its_conservative_end() -> None:
    # stage 3 starts mid-range (0.33); its conservative end (0.40) is feasible but slow
    sampler = BisectionSampler(
        coordinates=[
            {"name": "stage1", "low": 0.25, "high": 0.5, "step": 0.01},
            {"name": "stage3", "low": 0.28, "high": 0.4, "step": 0.01, "direction": "decrease"},
        ],
        start={"stage3": 0.33}, constraint_key="val_loss", noise_std=0.002, tolerance=0.02,
    )
    study = optuna.create_study(sampler=sampler)
    rng = np.random.default_rng(5)
    first_stage3_answer = None
    for _ in range(30):
        _two_d_round(study, 4, rng)
        est = sampler.boundary_estimate(study)
        if est["active"] == "stage3":
            first_stage3_answer = est["point"]
            break
    assert first_stage3_answer is not None, "stage 1 never froze"
    c1 = est["coordinates"][0]
    assert first_stage3_answer == {"stage1": c1["recommended"], "stage3": 0.33}
