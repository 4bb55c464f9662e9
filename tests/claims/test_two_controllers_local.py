"""Two `orch study run` processes, two studies of equal priority, one local machine with 2 GPUs (declared: no GPU
here, each trial's CUDA_VISIBLE_DEVICES is what it was given), one SQLite file. Before the fleet scheduler this ran
two trials on each GPU at once (issue 20); now: never two trials on one GPU, both studies progress side by side, and
the one that waits says so (`orch fleet queue --json`)."""

from __future__ import annotations

import json

from tests.conftest import orch, wait_for

from .shared import gpu_box, gpu_seconds, overlaps, runs, start, study_file


def test_two_controllers_share_one_machine_on_sqlite(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'orch.db'}"
    fleet = gpu_box(tmp_path)
    record = tmp_path / "record.jsonl"
    for name in ("a", "b"):
        # trials of 2 s: a controller's own delay in claiming a freed GPU (a loaded 2-core machine: a few hundred ms)
        # is small against a trial, so the shares measure the policy, not the machine's load
        path = study_file(tmp_path, name, record, trials=4, parallel=2, wall_s=2.0)
        assert orch("study", "create", name, "--from", str(path), "--db", db_url, cwd=tmp_path).returncode == 0
    procs = [start(db_url, tmp_path, name, fleet) for name in ("a", "b")]
    try:
        queue = wait_for(lambda: _waiting_queue(db_url, tmp_path, fleet), 60, "a study waiting in the fleet queue")
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("Traceback" not in out for out in outputs)
    seen = runs(record, {str(tmp_path / "runs"): "box"})
    assert overlaps(seen) == []  # never two trials on one GPU
    assert sorted((r.study, r.trial) for r in seen) == [(s, n) for s in "ab" for n in range(4)]  # each ran once
    assert all(len(r.gpus) == 1 and r.end is not None for r in seen)
    # both progressed side by side: in the time both had work, each held about one of the two GPUs
    both = (max(min(r.start for r in seen if r.study == s) for s in "ab"),
            min(max(r.end for r in seen if r.study == s) for s in "ab"))
    used = [gpu_seconds(seen, s, *both) for s in "ab"]
    assert min(used) >= 0.5 * max(used), (used, both)
    # the waiting study said for what: the other study holds the GPU it wants
    waiting = [st for st in queue["studies"] if st["waiting"]]
    # either the other study holds the GPU, or the policy gives the next free one to it first: both name it
    assert waiting, queue
    for st in waiting:
        other = "a" if st["study"] == "b" else "b"
        assert f"held by study {other!r}" in st["waiting_for"] or f"go first to study {other!r}" in st["waiting_for"], \
            queue
    held = {(e["study"], tuple(e["units"])) for e in queue["slots"]}
    assert {s for s, _ in held} <= {"a", "b"} and len({u for _, units in held for u in units}) == len(
        [u for _, units in held for u in units])  # no unit listed twice


def _waiting_queue(db_url, cwd, fleet) -> dict | None:
    result = orch("fleet", "queue", "--json", "--db", db_url, "--fleet", str(fleet), cwd=cwd)
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    return view if any(st["waiting"] for st in view["studies"]) else None
