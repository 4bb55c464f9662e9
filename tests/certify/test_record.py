"""`orch record`: the record folder of a study in its track's layout, checked against what the tracks' repositories
hold (docs/records.md): the committed GPU study as a modded-nanogpt record, and three real parameter-golf records
replayed through `orch` (their seed logs from tests/parsers/records) as parameter-golf submissions."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import scipy.stats
import yaml

from orchestrator.parsers.files import parse_log_file
from tests.conftest import REPO, dump_database, orch

STUDY_DIR = REPO / "docs" / "studies" / "2026-11-21-stage-shift"
PG_RECORDS = REPO / "tests" / "parsers" / "records"
ABSOLUTE = re.compile(r"(?<![\w.])/(work|root|home|opt|usr|tmp/pytest)[/\w.-]*")


def _ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _checksums_hold(folder: Path) -> list[str]:
    listed = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, _, path = line.partition("  ")
        listed[path] = digest
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    assert sorted(listed) == files  # every file, nothing else
    for path in files:
        assert hashlib.sha256((folder / path).read_bytes()).hexdigest() == listed[path], path
    return files


@pytest.fixture(scope="module")
def stage_shift(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stage-shift")
    shutil.copy(STUDY_DIR / "study.db", tmp / "study.db")  # the committed database stays as it is
    return tmp, f"sqlite:///{tmp / 'study.db'}"


def test_gpu_study_record_folder_has_the_modded_nanogpt_layout(stage_shift):
    tmp, url = stage_shift
    # confirmation runs 16, 18, 20 of the 0.31 variant: p = 0.017 over 3 runs, so not a record: exit 2, nothing written
    refused = orch("record", "stage-shift", "--track", "modded-nanogpt", "--variant", "#20", "--out",
                   str(tmp / "refused"), "--db", url, cwd=tmp)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "mean val_loss < 4.1433 at p < 0.01" in refused.stderr and "runs 16, 18, 20" in refused.stderr
    assert "p=0.017" in refused.stderr and "--draft" in refused.stderr and not (tmp / "refused").exists()
    before = dump_database(url)  # (as opened by orch: its schema brought up to date on the first open)
    out = tmp / "record"
    _ok(orch("record", "stage-shift", "--track", "modded-nanogpt", "--variant", "#20", "--out", str(out), "--draft",
             "--db", url, cwd=tmp))
    assert dump_database(url) == before  # orch record only reads
    files = _checksums_hold(out)
    assert files == ["README.md", "baseline/statistics.md", *[f"baseline/trial-000{n}.txt" for n in range(4)],
                     "command.diff", "this_pr/statistics.md", *[f"this_pr/trial-00{n}.txt" for n in (16, 18, 20)]]
    # each log reads back (orch parse-log) to the run the database holds
    losses = []
    for n in (16, 18, 20):
        run = parse_log_file(out / f"this_pr/trial-00{n}.txt", format="orch")
        assert run.complete and run.metrics["steps"] == 240
        losses.append(run.metrics["val_loss"])
    assert losses == [4.1301, 4.1363, 4.1344]
    p = scipy.stats.ttest_1samp(losses, 4.1433, alternative="less").pvalue
    stats = (out / "this_pr" / "statistics.md").read_text()
    assert f"| one-sided p vs 4.1433 | {p:.10f} |" in stats and "| mean val_loss | 4.1336000000 |" in stats
    assert "runs: `3` (trials 16, 18, 20)" in stats and "scipy.stats.ttest_1samp(losses, 4.1433" in stats
    readme = (out / "README.md").read_text()
    assert readme.startswith("# stage-shift\n\n> **DRAFT, not a record:**")
    table = {r[0]: r[1:] for r in (line.strip("|").split("|") for line in readme.splitlines()
                                   if line.startswith("| ") and "---" not in line)}
    assert [c.strip() for c in table[" n "]] == ["4", "3"] and table[" p(mean<4.1433) "][1].strip() == f"{p:.4f}"
    assert "| faster than the baseline timed on the same hardware (modded-nanogpt rule 4) | all | not checked |" in readme
    diff = (out / "command.diff").read_text()
    assert "-0.3333,0.3334,0.3333\n+0.3100,0.3567,0.3333\n" in diff
    for path in files:  # no path of the machine that wrote it (or ran it)
        assert not ABSOLUTE.search((out / path).read_text()), path


PG = "2026-03-20_Int6_MLP3x_SmearGate_BigramHash_MuonWD_SWA"  # 1.1458 on the leaderboard, after 1.1748:
PG_BEST = "2026-03-19_SlidingWindow_FP16Emb_10L_MuonWD_OvertoneInit"


def _record_mean(record: str, tmp: Path) -> float:
    losses = []
    for path in sorted(PG_RECORDS.glob(f"parameter_golf/{record}__train_seed*.log.gz")):
        plain = tmp / path.name[:-3]
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        losses.append(parse_log_file(plain, format="parameter-golf").metrics["val_loss"])
    return sum(losses) / len(losses)


def test_real_parameter_golf_records_replayed_as_a_submission(tmp_path):
    """A study whose 'trainer' prints a real record's seed logs: confirmed, certified against the record before it,
    and written as a parameter-golf record folder whose submission.json gives the seeds' published scores."""
    code = ("import glob, gzip, os, sys\n"
            "open('train_gpt.py', 'w').write('# the replayed record\\n')\n"
            "logs = sorted(glob.glob(os.environ['RECORDS'] + '/' + sys.argv[2] + '__train_seed*.log.gz'))\n"
            "sys.stdout.write(gzip.open(logs[int(sys.argv[4]) % len(logs)], 'rt').read())\n")
    spec = {"trainer": {"command": ["{python}", "-c", code], "log_format": "parameter-golf",
                        "env": {"RECORDS": str(PG_RECORDS / "parameter_golf")}},
            "parameters": {"record": {"type": "categorical", "choices": [PG]}},
            "arguments": {"flags": {"--record": "{record}", "--repeat": "{repeat}"}},
            "objective": {"minimize": "val_loss"}, "budget": {"max_trials": 1}, "timeout_s": 60}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    _ok(orch("study", "create", "pg", "--from", str(tmp_path / "study.yaml"), "--db", url, cwd=tmp_path))
    best = _record_mean(PG_BEST, tmp_path)
    summary = json.loads(_ok(orch(
        "study", "confirm", "pg", "--variant", f"record={PG}", "--max-runs", "3",
        "--first-look", "3", "--sigma", "0.002", "--track", "parameter-golf", "--best-score", f"{best:.8f}", "--json",
        "--db", url, cwd=tmp_path)).stdout)
    assert summary["decision"]["decision"] == "pass" and summary["certification"]["passed"]
    out = tmp_path / "record"
    _ok(orch("record", "pg", "--track", "parameter-golf", "--out", str(out), "--author", "Test", "--github-id", "t",
             "--db", url, cwd=tmp_path))
    files = _checksums_hold(out)
    seeds = summary["certification"]["runs"]
    assert sorted(files) == sorted(["README.md", "command.diff", "submission.json", "train_gpt.py",
                                    *[f"train_seed{n}.log" for n in seeds]])
    submission = json.loads((out / "submission.json").read_text())
    manifest = json.loads((PG_RECORDS / "manifest.json").read_text())
    published = sorted(float(e["expected_val_bpb"]) for e in manifest["entries"] if e["record"].endswith(PG))
    assert sorted(v["val_bpb"] for v in submission["seed_results"].values()) == published
    assert submission["val_bpb"] == pytest.approx(sum(published) / 3, abs=1e-8)
    assert submission["track"] == "10min_16mb" and submission["seeds"] == seeds and submission["github_id"] == "t"
    assert all(v["artifact_bytes"] <= 16_000_000 for v in submission["seed_results"].values())
    readme = (out / "README.md").read_text()
    assert "| artifact <= 16,000,000 bytes (code + compressed model) |" in readme and "FAIL" not in readme
    assert "DRAFT" not in readme and f"{best - submission['val_loss']:.5f} nats" in readme
    times = [float(line.split("|")[6]) for line in readme.splitlines() if re.match(r"\| \d+ \| 1\.9", line)]
    assert len(times) == 3 and all(599 < t < 601 for t in times)  # the 10-minute cap, as the logs print it
