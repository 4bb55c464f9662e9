"""The HTML write-up rendered by headless Chromium (Debian package `chromium`): the screenshot is not blank."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from db import Database
from orchestrator.export import RENDERERS
from orchestrator.study.csv_import import import_csv
from orchestrator.study.lifecycle import load_study_row

from ._helpers import reference_csv

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")
                 if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium "
                                              "fonts-dejavu-core)")
def test_html_write_up_renders_in_headless_chromium(tmp_path):
    from matplotlib.image import imread

    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    import_csv(db, reference_csv(), "stage-shift")
    page = tmp_path / "stage-shift.html"
    page.write_text(RENDERERS["html"](db, load_study_row(db, "stage-shift")), encoding="utf-8")
    shot, profile = tmp_path / "shot.png", tmp_path / "profile"
    profile.mkdir()
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri()]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), (result.returncode, result.stderr[-2000:])
    pixels = imread(str(shot))
    assert pixels.shape[:2] == (3000, 1200)
    rgb = (pixels[..., :3] * 255).round().astype("uint8").reshape(-1, 3)
    colours = {tuple(c) for c in rgb[:: 7]}
    assert len(colours) > 50, "the screenshot is (nearly) blank"
    non_white = (rgb < 240).any(axis=1).mean()
    assert 0.02 < non_white < 0.6, non_white  # text and tables, on a white page
