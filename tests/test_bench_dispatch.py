"""bench/dispatch.py at tiny scale: the real controller and a real SQLite file behind the benchmark's fake fleet
(its jobs are timers: the benchmark measures the controller, not processes), and the measures it reports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import dispatch  # noqa: E402


def test_measures_from_a_known_timeline():
    # two machines; m1 runs 0-1 then 1.2-2.2, m2 runs 0.1-2.1: the only free-to-start gap is 0.2 s
    jobs = [("m1", 0.0, 1.0), ("m1", 1.2, 2.2), ("m2", 0.1, 2.1)]
    m = dispatch.measures(jobs, machines=2)
    assert m["span_s"] == pytest.approx(2.2)
    assert m["floor_s"] == pytest.approx(2.0)  # 4 busy machine-seconds over 2 machines
    assert m["utilisation"] == pytest.approx(4.0 / (2 * 2.2))
    assert m["gaps"] == 1 and m["gap_p50_ms"] == pytest.approx(200.0) and m["gap_p99_ms"] == pytest.approx(200.0)
    assert m["fill_s"] == pytest.approx(0.1)  # the second machine got its first job 0.1 s after the first


def test_the_ideal_dispatcher_loses_only_the_tail():
    # two machines, durations 1, 1, 2 in that order: both start at 0, the third waits for the first free one
    m = dispatch.ideal(2, [1.0, 1.0, 2.0])
    assert m["span_s"] == pytest.approx(3.0) and m["utilisation"] == pytest.approx(4.0 / 6.0)
    assert m["gap_p99_ms"] == pytest.approx(0.0) and m["utilisation_to_last_dispatch"] == pytest.approx(1.0)


def test_tiny_run_completes_through_the_real_controller_and_writes_the_table(tmp_path):
    doc = tmp_path / "dispatch.md"
    doc.write_text("# page\n\nkept text\n<!-- dispatch:t:begin -->\nold\n<!-- dispatch:t:end -->\nafter\n")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "dispatch.py"), "--machines", "4", "--trials", "12",
                           "--systems", "orch-sqlite", "--write-docs", str(doc), "--tag", "t"],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = doc.read_text()
    assert "kept text" in text and text.rstrip().endswith("after") and "\nold\n" not in text
    row = re.search(r"^\| orch-sqlite \| 4 \| 12 \| (.*)\|$", text, re.M)
    assert row, text
    cells = [c.strip() for c in row.group(1).split("|")]
    utilisation, of_ideal = float(cells[3].rstrip("%")), float(cells[4].rstrip("%"))
    assert 0 < utilisation <= 100 and of_ideal == pytest.approx(100 * utilisation / float(re.search(
        r"^\| ideal \| 4 \| 12 \| [^|]*\|[^|]*\|[^|]*\| ([0-9.]+)%", text, re.M).group(1)), abs=0.2)
    assert float(cells[-1]) > 10  # SQL statements per trial: the controller really wrote to the database
    assert "Command: `python bench/dispatch.py --machines 4 --trials 12" in text
