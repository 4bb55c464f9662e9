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
