"""Rebuild `parameter_golf/` (the per-seed record fixture) from a git mirror of openai/parameter-golf.

    python tests/parsers/records/make_parameter_golf_records.py PATH/TO/openai+parameter-golf.git

For every record at the mirror's HEAD whose `submission.json` gives per-seed scores (`seed_results: {seed:
{val_bpb}}`, `seeds: {seed: {val_bpb}}`, `seeds: [..]` + `seed_scores: [..]`, `compliance_rerun.seed_results`),
the seed's log beside it is found (a log file whose name holds the seed as a whole number; see PAIRING for the
records where that is ambiguous), its tail is written gzip-compressed to `parameter_golf/` and the expected score, as printed in
submission.json, goes to `manifest.json`. The tail starts at the end of training (the `stopping_early` line or the
last step line) or 200 lines before the end, whichever is earlier, so every post-training scored line is kept.
It also writes `wallclock.csv`: for every log under `records/track_10min_16mb/` (the accepted 10-minute records)
that prints a `stopping_early: wallclock_cap` line, the training time and step count it prints there and the
step_avg of the last step line (the figures the 600 s rule is checked on).
Not run by the tests (they read only the files it wrote).
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "parameter_golf"
TAIL = 200

#: (record folder name, seed) -> log path inside the record folder, where the file name alone is ambiguous or wrong
PAIRING = {
    # README: "ttt_pr1767/seed_{42,0,1234}.log — TTT-only eval logs ... on the same artifacts"; submission.json's
    # per-seed val_bpb are those (train_seed*.log hold the stock-TTT numbers of the same artifacts)
    ("2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE", "42"): "ttt_pr1767/seed_42.log",
    ("2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE", "0"): "ttt_pr1767/seed_0.log",
    ("2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE", "1234"): "ttt_pr1767/seed_1234.log",
    # README: "Hybrid 32k ... Default seed: 1.4703, seed 42: 1.4716"; the default seed is 1341, its 32k log has no seed
    # in its name (the one named seed1341 is the 16k run, 1.3970)
    ("2026-04-04_GDN_Hybrid_LongContext", "1341"): "logs_experiment/hybrid_gdn_1xh100_600s_seq32768.txt",
}


def git(gitdir: str, *args: str) -> bytes:
    return subprocess.run(["git", "--git-dir", gitdir, *args], check=True, capture_output=True).stdout


def per_seed(sub: dict) -> list[tuple[str, str, str]]:
    """(key, seed, val_bpb text) for every per-seed score of a submission.json (numbers kept as printed)."""
    out = []
    groups = [("seed_results", sub.get("seed_results"))]
    if isinstance(sub.get("seeds"), dict):
        groups.append(("seeds", sub["seeds"]))
    rerun = sub.get("compliance_rerun")
    if isinstance(rerun, dict):
        groups.append(("compliance_rerun.seed_results", rerun.get("seed_results")))
    for key, group in groups:
        if isinstance(group, dict):
            out += [(key, str(seed), r["val_bpb"]) for seed, r in group.items() if isinstance(r, dict) and "val_bpb" in r]
    if isinstance(sub.get("seeds"), list) and isinstance(sub.get("seed_scores"), list):
        out += [("seed_scores", str(seed), score) for seed, score in zip(sub["seeds"], sub["seed_scores"])]
    return out


def pick_log(record: str, key: str, seed: str, logs: list[str]) -> str | None:
    if (record, seed) in PAIRING:
        return PAIRING[(record, seed)]
    named = [log for log in logs if re.search(rf"(?<!\d){seed}(?!\d)", log.rsplit("/", 1)[-1])]
    rerun = [log for log in named if "rerun" in log]
    # 2026-04-29: seed_results are the original runs, compliance_rerun.seed_results the GPTQ_RESERVE_SECONDS=8 reruns
    named = rerun if key.startswith("compliance_rerun") else ([log for log in named if log not in rerun] or named)
    return named[0] if len(named) == 1 else None


_END_OF_TRAINING = re.compile(r"^(?:\d{9,10}\.\d+ )?(?:stopping_early:|step:\d+/\d+ |\d+/\d+ (?:val|train)_loss)")


def tail(text: str) -> str:
    lines = text.splitlines(keepends=True)
    start = max(0, len(lines) - TAIL)
    ends = [i for i, line in enumerate(lines) if _END_OF_TRAINING.match(line)]
    if ends:
        start = min(start, ends[-1])
    return "".join(lines[start:])


_STOP = re.compile(r"stopping_early: wallclock_cap train_time:\s*(?P<ms>\d+)ms step:\s*(?P<step>\d+)/(?P<total>\d+)")
_STEP_AVG = re.compile(r"^(?:\d{9,10}\.\d+ )?(?:step:)?(?P<step>\d+)/\d+ .*step_avg:\s*(?P<avg>[\d.]+)ms")


def _wallclock(gitdir: str, files: list[str]) -> None:
    rows = ["log,train_time_ms,step,total_steps,step_avg_ms"]
    for path in sorted(files):
        if not (path.startswith("records/track_10min_16mb/") and re.search(r"\.(log|txt)$", path)):
            continue
        try:
            text = git(gitdir, "show", f"HEAD:{path}").decode("utf-8", errors="replace")
        except subprocess.CalledProcessError:
            continue  # a blob the mirror lacks
        stop = avg = None
        for line in text.splitlines():
            if m := _STOP.search(line):
                stop = m
            elif stop is None and (m := _STEP_AVG.match(line)):
                avg = m["avg"]
        if stop is not None:
            rows.append(f"{path[len('records/track_10min_16mb/'):]},{stop['ms']},{stop['step']},{stop['total']},{avg or ''}")
    (HERE / "wallclock.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


def main(gitdir: str) -> None:
    commit = git(gitdir, "rev-parse", "HEAD").decode().strip()
    files = git(gitdir, "ls-tree", "-r", "--name-only", "HEAD", "records").decode().split("\n")
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.log.gz"):
        old.unlink()
    entries, skipped = [], []
    for sub_path in sorted(f for f in files if f.endswith("/submission.json")):
        folder = sub_path.rsplit("/", 1)[0]
        record = folder.rsplit("/", 1)[-1]
        sub = json.loads(git(gitdir, "show", f"HEAD:{sub_path}"), parse_float=str, parse_int=str)
        logs = [f[len(folder) + 1:] for f in files if f.startswith(folder + "/") and re.search(r"\.(log|txt)$", f)
                and "requirements" not in f]
        for key, seed, expected in per_seed(sub):
            log = pick_log(record, key, seed, logs)
            if log is None:
                skipped.append(f"{record} {key} seed {seed}: no single log")
                continue
            text = git(gitdir, "show", f"HEAD:{folder}/{log}").decode("utf-8", errors="replace")
            name = f"{record}__{log.replace('/', '__')}"
            name = (name if name.endswith(".log") else name + ".log") + ".gz"
            (OUT / name).write_bytes(gzip.compress(tail(text).encode("utf-8"), mtime=0))
            entries.append({"record": folder, "key": key, "seed": seed, "log": log, "fixture": name,
                            "expected_val_bpb": expected})
    _wallclock(gitdir, files)
    manifest = {"source": "https://github.com/openai/parameter-golf", "commit": commit, "entries": entries,
                "skipped": skipped}
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"{len(entries)} seed logs from {commit[:9]}; skipped {len(skipped)}")


if __name__ == "__main__":
    main(sys.argv[1])
