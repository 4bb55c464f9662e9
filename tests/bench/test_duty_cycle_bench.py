"""bench/duty_cycle.py's plan of phases and its tables, without running a trial: the prime trial takes the flags and
environment of the phase after it (Inductor's cache key holds TORCHINDUCTOR_COMPILE_THREADS, so a prime run without
it left the next phase's first trial compiling from nothing), and the cache column counts the caches on disk only."""
import argparse
import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("duty_cycle_bench", REPO / "bench/duty_cycle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("phases, expected", [
    ("prime,forked:6,tuned:3", [("prime", 1, "forked"), ("forked", 6, "forked"), ("tuned", 3, "tuned")]),
    ("cold,prime,warm", [("cold", 4, "cold"), ("prime", 1, "warm"), ("warm", 4, "warm")]),
    ("prime", [("prime", 1, "warm")]),
    ("prime,cold,tuned:2", [("prime", 1, "tuned"), ("cold", 4, "cold"), ("tuned", 2, "tuned")]),
])
def test_the_prime_trial_takes_the_flags_of_the_phase_after_it(phases, expected):
    assert _module().plan_phases(phases, 4) == expected


@pytest.mark.parametrize("bad", ["prime,hot", "warm:0", "warm:x"])
def test_a_bad_phase_list_is_refused(bad):
    with pytest.raises(SystemExit, match="--phases takes"):
        _module().plan_phases(bad, 6)


def test_the_prime_study_file_has_the_next_phases_environment_but_not_its_fork_server(tmp_path):
    bench = _module()
    args = argparse.Namespace(preset="tiny", device="cpu", compile="1", train_files="t*.bin", val_files="v*.bin",
                              steps=20, threads=1, one_stage=True, trainer_args="", warm_args="--init-on-device 0",
                              tuned_args="--warmup-steps 1", tuned_env="TORCHINDUCTOR_COMPILE_THREADS=1",
                              fork_preload="torch", timeout_s=60)
    manifest = tmp_path / "SHA256SUMS"
    specs = {}
    for phase, count, like in bench.plan_phases("prime,forked:2", 6):
        specs[phase] = yaml.safe_load(bench.study_file(tmp_path, phase, count, manifest, args, like).read_text())
    prime, forked = specs["prime"]["trainer"], specs["forked"]["trainer"]
    assert prime["env"] == forked["env"] and prime["env"]["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    assert prime["command"] == forked["command"] and "--warmup-steps" in prime["command"]
    assert "--init-on-device" not in prime["command"]
    assert "fork_server" in forked and "fork_server" not in prime
    assert specs["prime"]["budget"]["max_trials"] == 1 and specs["forked"]["budget"]["max_trials"] == 2


def test_the_cache_column_counts_the_caches_on_disk_and_each_warm_phase_gets_its_trials_after_the_first():
    bench = _module()
    trial = {"startup_s": {"import": 1.0}, "fork": "forked", "compile_cache": {
        "fxgraph_cache_hit": 3, "autograd_cache_hit": 2, "async_compile_cache_hit": 53, "async_compile_cache_miss": 110}}
    first = {**trial, "compile_cache": {"fxgraph_cache_miss": 3, "autograd_cache_miss": 2}}
    [row] = bench.startup_table([{"phase": "forked", "trials": [first, trial, trial]}])[2:]
    assert row.endswith("| 10 / 5 | 3 of 3 |")
    duty = {"timed_s": 10.0, "machine_s": 20.0, "in_trial": 0.5, "occupancy": 1.0, "duty_cycle": 0.5}
    walls = [{"wall_s": 10.0, "warmup_s": 1.0}] * 3
    lines = bench.table([{"phase": "forked", "duty": duty, "trials": walls, "after_first": duty}])
    assert lines[3].startswith("| forked, trials 2..3 | 2 |")
