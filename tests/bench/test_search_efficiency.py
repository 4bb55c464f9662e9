"""bench/search_efficiency.py's driver on worlds of one, two and three searched parameters: every method is
driven through Optuna's ask/tell in rounds of 4, starts at the baseline, gets the same draw for the same run of a
variant (common random numbers), and the pick rule is read at the checkpoints. A short budget: the figures are the
benchmark's (docs/search.md), this checks the machinery they come from."""

from __future__ import annotations

from pathlib import Path
import sys

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
S = pytest.importorskip("search_efficiency")
W = S.W


@pytest.mark.parametrize("world", ["s1-only", "linear", "with-lr"])
def test_every_method_runs_the_same_draws_from_the_baseline_on_any_number_of_parameters(world: str) -> None:
    budget = 8
    results = {m: S.simulate(world, m, seed=3, budget=budget, checkpoints=(4, 8)) for m in ("ours", "random")}
    d = W.draw(world, 3)
    for method, res in results.items():
        assert len(res.runs) == budget, method
        assert res.runs[0][0] == d.base and res.runs[0][1] == 0  # the first run is the baseline's first
        assert set(res.picks) >= {4, 8}
        for pick in res.picks.values():
            assert pick is None or 0 <= pick < len(d.variants)
        assert all(len(d.variants[i]) == len(d.spec.axes) for i, *_ in res.runs)
    # the same (variant, repeat) got the same loss whichever method asked, on any machine
    losses = {}
    for res in results.values():
        for i, r, _machine, loss in res.runs:
            assert losses.setdefault((i, r), loss) == loss


def test_saved_runs_of_two_worlds_are_written_up_as_one_with_each_runs_command(tmp_path: Path) -> None:
    """--save keeps a run's raw results; --load writes several up as one table (a world run apart, or on
    another machine), each world's benchmarks.md line naming the command that produced it."""
    common = ["--seeds", "2", "--seeds-gp", "1", "--budget", "8", "--workers", "1", "--methods", "ours,random",
              "--write-docs", ""]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert S.main([*common, "--worlds", "s1-only", "--save", str(first)]) == 0
    assert S.main([*common, "--worlds", "linear", "--save", str(second)]) == 0
    parts = [S.load(first), S.load(second)]
    again = S.simulate("s1-only", "ours", seed=1, budget=8)
    saved = next(r for r in parts[0]["results"] if r.method == "ours" and r.seed == 1)
    assert saved.runs == again.runs and saved.picks == {c: again.picks[c] for c in saved.picks}
    assert saved.until_right == again.until_right
    docs = tmp_path / "search.md"
    (tmp_path / "benchmarks.md").write_text("| benchmark | script | doc | command |\n| --- | --- | --- | --- |\n")
    assert S.main(["--load", f"{first},{second}", "--write-docs", str(docs)]) == 0
    text = docs.read_text()
    assert "| s1-only | ours | 2 |" in text and "| linear | random | 2 |" in text
    assert text.count("--save") == 2 and "Written up as one by" in text  # both runs' commands, and the --load
    lines = [l for l in (tmp_path / "benchmarks.md").read_text().splitlines() if l.startswith(S.BENCH_ROW)]
    assert [("`s1-only`" in l, "a.json" in l, "b.json" in l) for l in lines] == [(True, True, False),
                                                                                 (False, False, True)]


def test_load_refuses_a_file_that_is_not_a_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"command": "x"}')
    with pytest.raises(SystemExit) as e:
        S.main(["--load", str(bad), "--write-docs", ""])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--load {bad}: not a file written by --save" in err and "KeyError" in err


def test_trials_until_right_is_also_reported_on_the_seeds_whose_noise_allows_a_right_pick_by_12() -> None:
    """The issue's goal (a right pick within 12 trials where the noise floor allows it) is read on the seeds where
    the known-shape floor is right within 12 trials, not on all seeds (most of which no method can get right)."""
    seeds = range(8)
    floors = [W.draw("steep", s).shape_floor_runs(S.TOLERANCE) for s in seeds]
    allowed = [s for s, f in zip(seeds, floors) if f <= S.FLOOR_ALLOWS]
    assert 0 < len(allowed) < len(floors)  # the column keeps some seeds and drops others
    results = [S.SeedResult("steep", "random", s, picks={12: None}, until_right=4.0 * (s + 1)) for s in seeds]
    (row,) = S.summarise(results, 12)
    share, median = row[f"where the known-shape floor is right by {S.FLOOR_ALLOWS}: seeds; trials until right, "
                        "median"].split("; ")
    assert share == f"{100 * len(allowed) / len(floors):.0f}%"
    expected = sorted(4.0 * (s + 1) for s in allowed)[len(allowed) // 2]  # the upper median, as the tables take
    assert median == f"{expected:.0f}"


def test_a_later_run_of_one_method_replaces_that_methods_earlier_seeds_when_written_up(tmp_path: Path) -> None:
    """One method run again after a change is written up with the other methods' earlier run: the later file's
    results replace the earlier one's for the same world, method and seed, and the header says how many."""
    def part(command: str, results: list) -> dict:
        return {"command": command, "seeds": 2, "seeds_gp": 1, "budget": 12, "workers": 1, "elapsed": 1.0,
                "results": results}
    old = [S.SeedResult("steep", m, s, picks={12: None}, until_right=40.0) for m in ("ours", "random") for s in (0, 1)]
    new = [S.SeedResult("steep", "ours", s, picks={12: None}, until_right=8.0) for s in (0, 1)]
    files = []
    for name, p in (("all.json", part("all", old)), ("ours.json", part("ours again", new))):
        S.save(tmp_path / name, p)
        files.append(str(tmp_path / name))
    docs = tmp_path / "search.md"
    assert S.main(["--load", ",".join(files), "--write-docs", str(docs)]) == 0
    text = docs.read_text()
    ours = next(l for l in text.splitlines() if l.startswith("| steep | ours |"))
    assert "| steep | ours | 2 |" in ours and "| 8 / 8 |" in ours  # the later run's seeds, each counted once
    assert "| steep | random | 2 |" in text and "(2 seed results replaced by a later run's)" in text
    assert "Methods: ours, random;" in text  # every method written up, not only the last run's
