"""optuna-dashboard on a study orch ran: the real dashboard (its own CLI, on a free port) serves metric names, the
user attrs (val_loss, machine, hit), feasibility in the form it reads, the curve from our metric points and
parameters on their step; a trial page in headless Chromium shows val_loss and the machine; a study deleted in the
dashboard is noticed by orch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from db import Database, MetricPointRow, TrialRow
from tests.conftest import _free_port, orch, stand_in_study, wait_for

from ._checks import rows_of

THRESHOLD = 3.24
DASHBOARD = Path(sys.executable).parent / "optuna-dashboard"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")
                 if shutil.which(n)), None)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def _answers(base: str) -> bool:
    try:
        _get(f"{base}/api/meta")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A study of 6 trials run by `orch`, and optuna-dashboard serving its database (one for the module: the
    deletion test comes last)."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    study = stand_in_study(tmp_path, max_trials=6, parallel=2, threshold=THRESHOLD)
    for args in (["study", "create", "s", "--from", str(study)], ["study", "run", "s"]):
        result = orch(*args, "--db", url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    port = _free_port()
    server = subprocess.Popen([str(DASHBOARD), url, "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base) or server.poll() is not None, 60, "optuna-dashboard to answer")
        assert server.poll() is None, server.stderr.read()
        yield base, url, tmp_path, study
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_dashboard_api_shows_what_a_user_expects(dashboard):
    base, url, tmp_path, study = dashboard
    (summary,) = _get(f"{base}/api/studies")["study_summaries"]
    assert summary["study_name"] == "s"
    detail = _get(f"{base}/api/studies/{summary['study_id']}")
    assert detail["objective_names"] == ["train_time_s"]  # not "Objective 0"
    db = Database(url)
    rows = {r.number: r for r in rows_of(db, "s")}
    assert sorted(t["number"] for t in detail["trials"]) == sorted(rows)
    assert {r.feasible for r in rows.values()} == {True, False}  # the threshold splits them: both forms are shown
    for trial in detail["trials"]:
        row = rows[trial["number"]]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert attrs["machine"] == row.machine and attrs["hit"] == str(row.feasible)
        assert float(attrs["val_loss"]) == row.metrics["val_loss"]
        (violation,) = trial["constraints"]  # the list the dashboard reads feasibility from
        assert violation == pytest.approx(row.metrics["val_loss"] - THRESHOLD) and (violation <= 0) == row.feasible
        with db.session() as s:
            points = s.execute(select(MetricPointRow.step, MetricPointRow.val_loss).where(
                MetricPointRow.trial_id == row.id, MetricPointRow.kind == "val").order_by(MetricPointRow.step)).all()
        assert [(v["step"], v["value"]) for v in trial["intermediate_values"]] == [tuple(p) for p in points]
        assert len(points) == 4
        for param in trial["params"]:  # on the 0.02 grid, written as such (not 0.42000000000000004)
            text = param["param_external_value"]
            assert len(text.split(".")[-1]) <= 2, text
            assert float(text) == row.params[param["name"]]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium "
                                              "fonts-dejavu-core)")
def test_a_trial_page_in_headless_chromium_shows_val_loss_and_the_machine(dashboard, tmp_path):
    from matplotlib.image import imread

    base, url, _, _ = dashboard
    (summary,) = _get(f"{base}/api/studies")["study_summaries"]
    row = rows_of(Database(url), "s")[0]
    page = f"{base}/dashboard/studies/{summary['study_id']}/trials?numbers={row.number}"
    profile, shot = tmp_path / "profile", tmp_path / "trial.png"
    profile.mkdir()
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1400,1000"]
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    text = " ".join(re.sub(r"<[^>]+>", " ", dom.stdout).split())
    # the trial's card: its user attributes, rendered by the dashboard's own frontend from the API
    card = text[text.find(f"Trial {row.number} (trial_id="):]
    assert "User Attributes" in card, text[:2000]
    attrs = card[card.find("User Attributes"):]
    assert f"machine {row.machine}" in attrs and f"val_loss {row.metrics['val_loss']}" in attrs
    assert f"hit {row.feasible}" in attrs and "Intermediate Values" in card
    subprocess.run([*common, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=120)
    pixels = imread(str(shot))
    rgb = (pixels[..., :3] * 255).round().astype("uint8").reshape(-1, 3)
    assert len({tuple(c) for c in rgb[::7]}) > 20, "the screenshot is (nearly) blank"


def test_a_study_deleted_in_the_dashboard_is_noticed_and_its_name_reused(dashboard):
    base, url, tmp_path, study = dashboard
    (summary,) = _get(f"{base}/api/studies")["study_summaries"]
    request = urllib.request.Request(f"{base}/api/studies/{summary['study_id']}", method="DELETE", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 204
    result = orch("study", "status", "s", "--db", url, cwd=tmp_path)
    assert result.returncode == 2 and "was deleted from Optuna's tables" in result.stderr
    assert "Traceback" not in result.stderr
    created = orch("study", "create", "s", "--from", str(study), "--db", url, cwd=tmp_path)
    assert created.returncode == 0 and "leftover rows of it (6 trials) were removed" in created.stdout
    with Database(url).session() as s:
        assert s.scalar(select(TrialRow.id)) is None
