"""The fleet over a real network: three machines as network namespaces, each with its own sshd on 10.200.N.x behind
a bridge (netns_lab.py), trials run through the real controller and ssh launcher, one machine in podman containers.

Faults are real too: `ip link set ... down` pulls a machine's cable mid-trial (nothing is told: TCP stays open,
packets vanish). Skipped with the reason when network namespaces cannot be made (not root)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db import Database, EventRow, MachineRow, MetricPointRow, TrialRow
from orchestrator.cli.fleet_view import FleetProber, fleet_status, render_fleet_status
from orchestrator.config.fleet_file import load_fleet
from orchestrator.run.controller import Controller
from orchestrator.launchers.ssh import SshLauncher
from orchestrator.study.lifecycle import create_study
from tests.conftest import REPO, group_alive, orch, stand_in_study, wait_for
from tests.fleet.netns_lab import LabUnavailable, NetnsLab

KEEPALIVE_S, DEAD_AFTER_S, HEARTBEAT_S, HEALTH_CHECK_S = 0.5, 2.0, 0.5, 1.0
HELPERS = REPO / "tests" / "helpers"


@pytest.fixture(scope="module")
def lab():
    base = Path(tempfile.mkdtemp(prefix="orch-netns-"))
    try:
        lab = NetnsLab(base)
    except LabUnavailable as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(str(exc))
    try:
        lab.machine("na")
        lab.machine("nb")
        lab.machine("nc", cpus="0")  # a machine with one usable core: `nproc` there says 1
        yield lab
    finally:
        lab.close()
        shutil.rmtree(base, ignore_errors=True)


def _study(tmp_path: Path, **kwargs) -> Path:
    """The stand-in trainer run by the system python3: the same path works on the machines (one filesystem) and in
    the container (the helpers directory is mounted at the same path)."""
    path = stand_in_study(tmp_path, **kwargs)
    spec = yaml.safe_load(path.read_text())
    spec["trainer"]["command"] = ["python3", *spec["trainer"]["command"][1:]]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _fleet(tmp_path: Path, entries: list[dict]):
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump({"machines": entries}, sort_keys=False))
    return path, load_fleet(path)


class _Run:
    """The controller in a thread; `error` holds what ended it if it raised."""

    def __init__(self, controller: Controller) -> None:
        self.controller, self.error = controller, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.controller.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the controller did not finish"
        assert self.error is None, repr(self.error)


def _wait(what: str, condition, timeout: float):
    return wait_for(condition, timeout, what, every=0.05)


def _reporting(db: Database) -> dict[str, int]:
    """machine -> number of its running trial that has sent a val point already."""
    with db.session() as s:
        rows = s.execute(select(TrialRow.machine, TrialRow.number).join(MetricPointRow, MetricPointRow.trial_id == TrialRow.id)
                         .where(TrialRow.state == "running").distinct()).all()
    return {machine: number for machine, number in rows}


def _launcher(**kwargs) -> SshLauncher:
    return SshLauncher(keepalive_s=KEEPALIVE_S, dead_after_s=DEAD_AFTER_S, kill_grace_s=1, **kwargs)


@pytest.mark.slow
def test_study_on_three_namespaces_one_in_podman_and_the_status_view(lab, podman_image, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    na, nb, nc = (lab.machines[n] for n in ("na", "nb", "nc"))
    container = {"runtime": "podman", "image": podman_image.name, "mounts": [f"{HELPERS}:{HELPERS}:ro"]}
    path, fleet = _fleet(tmp_path, [na.fleet_entry(tmp_path / "r-na", cpu_slots=1),
                                    nb.fleet_entry(tmp_path / "r-nb", cpu_slots=1),
                                    nc.fleet_entry(tmp_path / "r-nc", cpu_slots="auto", container=container)])
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    db = Database(url)
    create_study(db, "s", _study(tmp_path, max_trials=6, parallel=3, dispatch="continuous", retries=0,
                                 extra_args=["--wall-s", "3", "--val-every", "10"]))
    launcher = _launcher(podman=podman_image.options)
    controller = Controller(db, "s", fleet, launchers={"ssh": launcher}, heartbeat_s=HEARTBEAT_S,
                            health_check_s=HEALTH_CHECK_S)
    prober = FleetProber(fleet, probe_timeout_s=5)
    try:
        run = _Run(controller)
        _wait("a reporting trial on each machine", lambda: set(_reporting(db)) == {"na", "nb", "nc"}, timeout=60)
        view = fleet_status(db, fleet, prober)
        with db.session() as s:
            where = dict(s.execute(select(TrialRow.number, TrialRow.machine)).all())
        for m in view["machines"]:
            assert m["reachable"] and m["state"] == "busy", m
            assert len(m["running"]) == 1 and where[m["running"][0]["number"]] == m["name"]  # the right trial
            trial = m["running"][0]
            assert trial["val_loss"] is not None and trial["elapsed_s"] > 0 and trial["study"] == "s"
            assert m["last_heartbeat"] is not None and m["gpu_count"] == 0 and m["gpu_type"] == "no GPU"
        by_name = {m["name"]: m for m in view["machines"]}
        assert by_name["nc"]["cpu_count"] == 1 and by_name["nc"]["cpu_slots"] == 1  # counted on the machine
        assert by_name["na"]["cpu_count"] == len(os.sched_getaffinity(0))
        text = render_fleet_status(view)
        assert "busy" in text and "no GPU" in text and "val_loss" in text
        run.join(timeout=90)
        after = fleet_status(db, fleet, prober)
        assert [(m["name"], m["state"], m["running"]) for m in after["machines"]] == \
            [("na", "idle", []), ("nb", "idle", []), ("nc", "idle", [])]
    finally:
        prober.close()
        launcher.close()
    assert sorted(s.machine for s in controller.scheduler.slots) == ["na", "nb", "nc"]  # nc: `nproc` = 1 slot
    with db.session() as s:
        rows = s.scalars(select(TrialRow).order_by(TrialRow.number)).all()
    assert [r.state for r in rows] == ["complete"] * 6 and {r.machine for r in rows} == {"na", "nb", "nc"}
    for row in rows:
        if row.machine == "nc":
            assert row.command[0] == "podman" and row.container_image_id == podman_image.image_id
        else:
            assert row.command[0] == "python3" and row.container_image_id is None
    watched = orch("fleet", "status", "--watch", "--count", "2", "--interval", "0.3", "--json", "--fleet", str(path),
                   "--db", url, cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    frames = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(frames) == 2 and all(m["reachable"] and m["state"] == "idle" for f in frames for m in f["machines"])


@pytest.mark.slow
def test_cutting_a_link_mid_trial_fails_it_by_machine_and_the_machine_comes_back(lab, tmp_path, monkeypatch, figures):
    """Also issue 8's fault 2b: its timings go to docs/reliability.md (`figures`) and are printed (-s)."""
    monkeypatch.chdir(tmp_path)
    na, nb, nc = (lab.machines[n] for n in ("na", "nb", "nc"))
    _, fleet = _fleet(tmp_path, [m.fleet_entry(tmp_path / f"r-{m.name}", cpu_slots=1) for m in (na, nb, nc)])
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", _study(tmp_path, max_trials=7, parallel=3, dispatch="continuous", retries=1,
                                 extra_args=["--wall-s", "5", "--val-every", "5"]))
    launcher = _launcher()
    controller = Controller(db, "s", fleet, launchers={"ssh": launcher}, heartbeat_s=HEARTBEAT_S,
                            health_check_s=HEALTH_CHECK_S)
    prober = FleetProber(fleet, probe_timeout_s=1.5)
    try:
        run = _Run(controller)
        victim = _wait("a reporting trial on each machine", lambda: (lambda r: set(r) == {"na", "nb", "nc"} and r)(
            _reporting(db)), timeout=60)["na"]
        pgid = int((tmp_path / "r-na" / "s" / f"trial-{victim:04d}" / ".orch-job.pid").read_text())
        cut_at = time.monotonic()
        lab.cut("na")

        def lost():
            with db.session() as s:
                return s.scalar(select(TrialRow).where(TrialRow.number == victim, TrialRow.state == "lost"))

        row = _wait("the trial on the cut machine to be lost", lost, timeout=20)
        detected_s = time.monotonic() - cut_at
        assert row.exit_reason == "machine_lost" and "connection lost: na" in row.note
        assert detected_s <= KEEPALIVE_S + DEAD_AFTER_S + HEARTBEAT_S + 2.0
        with db.session() as s:
            events = s.execute(select(EventRow.at, EventRow.kind, EventRow.old, EventRow.new, EventRow.message)
                               .where(EventRow.machine == "na").order_by(EventRow.id)).all()
            assert s.scalar(select(MachineRow.state).where(MachineRow.name == "na")) == "down", events
        down = {m["name"]: m for m in fleet_status(db, fleet, prober)["machines"]}
        assert not down["na"]["reachable"] and down["na"]["state"] == "down" and down["nb"]["reachable"]

        def retry_running():
            with db.session() as s:
                return s.scalar(select(TrialRow).where(TrialRow.retry_of == victim, TrialRow.state == "running"))

        retry = _wait("the lost trial's retry to start", retry_running, timeout=20)
        assert retry.machine in ("nb", "nc") and retry.params == row.params  # re-run elsewhere, same values
        # the partitioned machine's sshd gives up on the vanished client (ClientAliveInterval) and the job dies
        _wait("the orphaned job on the cut machine to be killed", lambda: not group_alive(pgid), timeout=15)
        up_at = time.monotonic()
        lab.restore("na")

        def back():
            with db.session() as s:
                return s.scalar(select(MachineRow.state).where(MachineRow.name == "na")) == "idle"

        _wait("the machine to pass its health check", back, timeout=20)
        recovered_s = time.monotonic() - up_at

        def new_trial_on_na():
            with db.session() as s:
                return s.scalar(select(TrialRow.number).where(TrialRow.machine == "na", TrialRow.number != victim))

        _wait("a new trial on the recovered machine", new_trial_on_na, timeout=20)
        first_trial_s = time.monotonic() - up_at
        assert {m["name"]: m for m in fleet_status(db, fleet, prober)["machines"]}["na"]["reachable"]
        run.join(timeout=60)
    finally:
        lab.restore("na")
        prober.close()
        launcher.close()
    print(f"\nlink cut -> trial lost, machine down: {detected_s:.2f} s (keepalive {KEEPALIVE_S} s, dead after "
          f"{DEAD_AFTER_S} s, heartbeat {HEARTBEAT_S} s); link up -> machine back: {recovered_s:.2f} s (health check "
          f"every {HEALTH_CHECK_S} s); link up -> next trial on it: {first_trial_s:.2f} s")
    with db.session() as s:
        rows = s.scalars(select(TrialRow).order_by(TrialRow.number)).all()
    by_number = {r.number: r for r in rows}
    assert by_number[victim].state == "lost" and by_number[retry.number].state == "complete"
    assert sorted(r.state for r in rows) == ["complete"] * 7 + ["lost"]
    assert any(r.machine == "na" and r.state == "complete" and r.number != victim for r in rows)
    figures.record("2b", "sqlite", injected=f"the network-namespace link of one of three ssh machines cut mid-trial "
                   f"(`ip link set down`; keepalive {KEEPALIVE_S} s, dead after {DEAD_AFTER_S} s), restored after the retry ran",
                   behaviour=f"trial marked lost (machine_lost) {detected_s:.2f} s after the cut, machine down, the retry "
                   f"ran on another machine and completed; link up -> machine back (health check every {HEALTH_CHECK_S} s) "
                   f"in {recovered_s:.2f} s and a new trial on it {first_trial_s:.2f} s after the link came up",
                   recover_s=round(first_trial_s, 2), recover_what="link up to a new trial on the machine", lost=0,
                   duplicates=0)


@pytest.mark.slow
def test_a_machine_unreachable_at_start_gets_trials_once_it_answers(lab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    na, nb = lab.machines["na"], lab.machines["nb"]
    _, fleet = _fleet(tmp_path, [m.fleet_entry(tmp_path / f"r-{m.name}", cpu_slots=1) for m in (na, nb)])
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", _study(tmp_path, max_trials=5, parallel=2, dispatch="continuous",
                                 extra_args=["--wall-s", "2", "--val-every", "10"]))
    launcher = _launcher(connect_timeout_s=2)
    controller = Controller(db, "s", fleet, launchers={"ssh": launcher}, heartbeat_s=HEARTBEAT_S,
                            health_check_s=HEALTH_CHECK_S)
    lab.cut("nb")
    try:
        run = _Run(controller)
        _wait("a trial on the reachable machine", lambda: "na" in _reporting(db), timeout=30)
        with db.session() as s:
            assert s.scalar(select(MachineRow.state).where(MachineRow.name == "nb")) == "down"
        assert {s.machine for s in controller.scheduler.slots} == {"na"}
        lab.restore("nb")
        up_at = time.monotonic()

        def on_nb():
            with db.session() as s:
                return s.scalar(select(TrialRow.number).where(TrialRow.machine == "nb"))

        _wait("a trial on the machine that answered late", on_nb, timeout=20)
        print(f"\nlink up -> first trial on the late machine: {time.monotonic() - up_at:.2f} s")
        run.join(timeout=60)
    finally:
        lab.restore("nb")
        launcher.close()
    with db.session() as s:
        rows = s.scalars(select(TrialRow)).all()
    assert len(rows) == 5 and {r.state for r in rows} == {"complete"} and {r.machine for r in rows} == {"na", "nb"}


NVIDIA_SMI_CAPTURE = Path(__file__).parent / "fixtures" / "nvidia_smi_h100.csv"


def test_status_view_shows_each_gpu_through_ssh(lab, tmp_path):
    """No GPU here: the machine's `nvidia-smi` is a stand-in that prints what the real one printed on an H100 machine
    (fixtures/nvidia_smi_h100.csv, captured 2026-11-21 with the probe's query); ssh, probe, parse and view are real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexec cat {NVIDIA_SMI_CAPTURE}\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    ng = lab.machine("ng", bin_dir=bin_dir)
    _, fleet = _fleet(tmp_path, [ng.fleet_entry(tmp_path / "r-ng", gpus="auto"),
                                 lab.machines["na"].fleet_entry(tmp_path / "r-na")])
    captured = [[part.strip() for part in line.split(",")] for line in NVIDIA_SMI_CAPTURE.read_text().splitlines()]
    prober = FleetProber(fleet, probe_timeout_s=5)
    try:
        view = fleet_status(Database(f"sqlite:///{tmp_path / 'orch.db'}"), fleet, prober)
    finally:
        prober.close()
    gpu_box, cpu_box = view["machines"]
    assert gpu_box["reachable"] and gpu_box["state"] == "idle" and gpu_box["gpu_count"] == len(captured)
    assert gpu_box["gpu_type"] == captured[0][1] and cpu_box["gpu_type"] == "no GPU" and cpu_box["gpus"] == []
    text = render_fleet_status(view)
    assert f"{len(captured)} x {captured[0][1]}" in text
    for gpu, row in zip(gpu_box["gpus"], captured):
        assert (gpu["index"], gpu["name"], gpu["utilization_pct"], gpu["memory_used_mib"], gpu["memory_total_mib"],
                gpu["temperature_c"]) == (int(row[0]), row[1], float(row[2]), float(row[3]), float(row[4]), float(row[5]))
        assert (f"ng gpu{row[0]}: {row[1]} util {float(row[2]):.0f}% mem {float(row[3]):.0f}/{float(row[4]):.0f} MiB "
                f"temp {float(row[5]):.0f}C") in text


def test_an_idle_machine_that_fails_its_health_check_is_down_until_it_passes(lab, tmp_path, monkeypatch):
    """No trial runs on nb (parallel 1: na comes first in the free list), so only the health check can notice."""
    monkeypatch.chdir(tmp_path)
    na, nb = lab.machines["na"], lab.machines["nb"]
    _, fleet = _fleet(tmp_path, [m.fleet_entry(tmp_path / f"r-{m.name}", cpu_slots=1) for m in (na, nb)])
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", _study(tmp_path, max_trials=1, parallel=1, extra_args=["--wall-s", "60", "--val-every", "1"]))
    launcher = _launcher(connect_timeout_s=2, probe_timeout_s=2)
    controller = Controller(db, "s", fleet, launchers={"ssh": launcher}, heartbeat_s=HEARTBEAT_S,
                            health_check_s=HEALTH_CHECK_S)

    def state(name: str) -> str:
        with db.session() as s:
            return s.scalar(select(MachineRow.state).where(MachineRow.name == name))

    try:
        run = _Run(controller)
        _wait("the trial on na", lambda: "na" in _reporting(db), timeout=30)
        lab.cut("nb")
        _wait("nb marked down by its health check", lambda: state("nb") == "down", timeout=HEALTH_CHECK_S + 10)
        assert "nb" in controller.scheduler.unavailable and state("na") == "idle"
        lab.restore("nb")
        _wait("nb back after passing its health check", lambda: state("nb") == "idle", timeout=HEALTH_CHECK_S + 10)
        controller.request_stop("test over")
        run.thread.join(timeout=30)
    finally:
        lab.restore("nb")
        launcher.close()
    with db.session() as s:
        kinds = s.execute(select(MachineRow.name, MachineRow.state)).all()
    assert dict(kinds) == {"na": "idle", "nb": "idle"}


def test_a_trial_sent_to_a_machine_that_just_vanished_is_lost_not_failed(lab, tmp_path, monkeypatch):
    """The link is cut right after na's first trial ends, before the next is sent there (the reporter runs on the
    controller's thread): the launch fails, a probe finds na unreachable, so the trial is `lost` to the machine and
    re-run on nb, instead of counting as a failed trial."""
    monkeypatch.chdir(tmp_path)
    na, nb = lab.machines["na"], lab.machines["nb"]
    _, fleet = _fleet(tmp_path, [m.fleet_entry(tmp_path / f"r-{m.name}", cpu_slots=1) for m in (na, nb)])
    db = Database(f"sqlite:///{tmp_path / 'orch.db'}")
    create_study(db, "s", _study(tmp_path, max_trials=2, parallel=1, retries=1, extra_args=["--wall-s", "1"]))
    launcher = _launcher(connect_timeout_s=2, probe_timeout_s=2)

    def reporter(progress, message: str) -> None:
        if message.startswith("trial 0: train_time_s="):
            lab.cut("na")

    controller = Controller(db, "s", fleet, reporter=reporter, launchers={"ssh": launcher}, heartbeat_s=HEARTBEAT_S,
                            health_check_s=600)
    try:
        _Run(controller).join(timeout=90)
    finally:
        lab.restore("na")
        launcher.close()
    with db.session() as s:
        rows = s.scalars(select(TrialRow).order_by(TrialRow.number)).all()
        na_state = s.scalar(select(MachineRow.state).where(MachineRow.name == "na"))
    assert [(r.state, r.machine) for r in rows] == [("complete", "na"), ("lost", "na"), ("complete", "nb")]
    assert rows[1].exit_reason == "machine_lost" and "could not start" in rows[1].note
    assert rows[2].retry_of == rows[1].number and na_state == "down"
