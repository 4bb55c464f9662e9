"""The slurm launcher on the session's real Slurm cluster (tests/helpers/slurm_lab.py: slurmctld, two slurmd nodes
`sa` and `sb` with 4 fake GPUs each, munge): allocation from the study's resources, node states in `orch fleet
status`, re-attach by job name, and a study whose controller is killed mid-run and started again (the contract the
launcher shares with the others is in test_launcher_contract.py)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db import Database, EventRow, MetricPointRow, TrialRow
from orchestrator.config.fleet import Machine
from orchestrator.jobs import JobSpec
from orchestrator.launchers.base import ExitEvent, JobRecord, LineEvent, Slot
from orchestrator.launchers.slurm import SlurmError, SlurmLauncher, job_name
from tests.conftest import REPO, orch, stand_in_study, wait_for
from tests.orch._checks import assert_agrees_with_optuna


def _machine(lab, name: str, tmp_path: Path, **slurm) -> Machine:
    return Machine(name=name, launcher="slurm", gpus="auto", cpu_slots=2, workdir=str(tmp_path),
                   slurm={"env": lab.env, "poll_s": 0.2, **slurm})


def _run(launcher, machine, slot, tmp_path, trial, script):
    events: queue.Queue = queue.Queue()
    handle = launcher.start(JobSpec("alloc", trial, ["bash", "-c", script], {}, timeout_s=60), machine, slot,
                            tmp_path / f"t{trial}", events)
    lines = []
    while True:
        event = events.get(timeout=60)
        if isinstance(event, LineEvent):
            lines.append(event.line.strip())
        elif isinstance(event, ExitEvent):
            return handle, lines, event


def _job_fields(lab, job_id: str) -> dict:
    return next(j for j in lab.jobs() if j["JobId"] == job_id)


def test_gpus_per_trial_become_gres_and_all_of_a_nodes_gpus_the_whole_node(slurm_lab, tmp_path):
    machine = _machine(slurm_lab, "sa", tmp_path)
    launcher = SlurmLauncher()
    try:
        assert launcher.probe(machine).gpu_count == 4
        show = 'echo "gpus=$CUDA_VISIBLE_DEVICES cpus=$(nproc) slurm_cpus=$SLURM_CPUS_ON_NODE"'
        handle, lines, end = _run(launcher, machine, Slot("sa", 0, gpu_ids=(0, 1)), tmp_path, 1, show)
        assert end.returncode == 0 and lines[0].startswith("gpus=0,1 "), lines
        two = _job_fields(slurm_lab, handle.job_id)
        assert (two["TresPerNode"], two["OverSubscribe"], two["NumCPUs"]) == ("gres:gpu:2", "OK", "1")
        handle, lines, end = _run(launcher, machine, Slot("sa", 0, gpu_ids=(0, 1, 2, 3)), tmp_path, 2, show)
        assert end.returncode == 0 and lines[0].startswith("gpus=0,1,2,3 ") and "slurm_cpus=2" in lines[0], lines
        whole = _job_fields(slurm_lab, handle.job_id)
        assert (whole["TresPerNode"], whole["OverSubscribe"]) == ("gres:gpu:4", "NO")  # --exclusive: the whole node
        assert "cpu=2,mem=4000M" in whole["TRES"]  # every core and all the memory (--mem=0)
        handle, lines, end = _run(launcher, machine, Slot("sa", 1), tmp_path, 3, show)  # a CPU slot: 2 cores / 2 slots
        assert end.returncode == 0 and lines[0].startswith("gpus= ") and "slurm_cpus=1" in lines[0], lines
        cpu_job = _job_fields(slurm_lab, handle.job_id)
        assert "gpu" not in cpu_job.get("TresPerNode", "") and cpu_job["NumCPUs"] == "1"
        with pytest.raises(SlurmError) as refused:  # more GPUs than the node has: refused at once, with the fix
            launcher.start(JobSpec("alloc", 4, ["true"], {}), machine, Slot("sa", 0, gpu_ids=tuple(range(8))),
                           tmp_path / "t4", queue.Queue())
        assert "sbatch refused trial 4" in str(refused.value) and "fix:" in str(refused.value)
    finally:
        launcher.close()


def test_a_trial_whose_job_id_was_never_recorded_is_found_by_its_name(slurm_lab, tmp_path):
    """The controller died between sbatch and writing the job id: the row is `pending` without it."""
    machine = _machine(slurm_lab, "sb", tmp_path)
    first, second = SlurmLauncher(), SlurmLauncher()
    try:
        handle = first.start(JobSpec("byname", 9, ["bash", "-c", "echo one; sleep 1; echo two"], {}), machine,
                             Slot("sb", 0), tmp_path / "t9", queue.Queue())
        first.close()  # the controller is gone; its job is not
        record = JobRecord(study="byname", trial=9, machine="sb", slot="cpu:0", workdir=tmp_path / "t9",
                           log_path=tmp_path / "t9" / "train.log")
        events: queue.Queue = queue.Queue()
        found = second.reattach(record, machine, events)
        assert found is not None and found.job_ref == handle.job_id
        lines = []
        while not isinstance(event := events.get(timeout=30), ExitEvent):
            lines.append(event.line.strip())
        assert lines == ["one", "two"] and event.returncode == 0
        gone = JobRecord(study="byname", trial=10, machine="sb", slot="cpu:0", workdir=tmp_path / "t10",
                         log_path=tmp_path / "t10" / "train.log", job_ref="987654")
        assert second.reattach(gone, machine, queue.Queue()) is None  # Slurm does not know it: nothing to follow
        assert second.reattach(JobRecord(study="byname", trial=10, machine="sb", slot=None, workdir=tmp_path / "t10",
                                         log_path=tmp_path / "t10" / "train.log"), machine, queue.Queue()) is None
    finally:
        second.close()
    assert job_name("byname", 9, tmp_path / "t9") != job_name("byname", 9, tmp_path / "other")


def test_fleet_status_shows_a_drained_and_a_down_node_with_slurms_reason(slurm_lab, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"defaults": {"launcher": "slurm", "slurm": {"env": slurm_lab.env}},
                                     "machines": [{"name": "sa"}, {"name": "sb"}, {"name": "gone"}]}))
    slurm_lab.set_node("sa", "drain", "fan replaced")
    slurm_lab.set_node("sb", "down", "psu")
    try:
        result = orch("fleet", "status", "--fleet", str(fleet), "--json", "--db", f"sqlite:///{tmp_path / 'o.db'}",
                      cwd=tmp_path)
    finally:
        slurm_lab.resume("sa")
        slurm_lab.resume("sb")
    assert result.returncode == 0, result.stderr
    machines = {m["name"]: m for m in json.loads(result.stdout)["machines"]}
    sa, sb, gone = machines["sa"], machines["sb"], machines["gone"]
    assert (sa["state"], sa["launcher"], sa["reachable"]) == ("drained", "slurm", False)
    assert sa["refusals"][0]["kind"] == "drained" and "fan replaced" in sa["refusals"][0]["reason"]
    assert "scontrol update nodename=sa state=resume" in sa["refusals"][0]["fix"]
    assert sb["state"] == "down" and "psu" in sb["error"]
    assert gone["state"] == "down" and "node gone" in gone["error"] and "slurm.node" in gone["error"]
    after = orch("fleet", "status", "--fleet", str(fleet), "--json", "--db", f"sqlite:///{tmp_path / 'o.db'}",
                 cwd=tmp_path)
    states = {m["name"]: (m["state"], m["gpu_count"], m["cpu_slots"]) for m in json.loads(after.stdout)["machines"]}
    assert states["sa"] == states["sb"] == ("idle", 4, None)


def _study(tmp_path: Path, marker: Path) -> Path:
    spec = yaml.safe_load(stand_in_study(tmp_path, extra_args=["--wall-s", "6", "--marker", str(marker)],
                                         max_trials=4, parallel=4, retries=2, timeout_s=120).read_text())
    spec["resources"] = {"gpus": 2}
    path = tmp_path / "slurm-study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_killed_controller_is_restarted_and_reattaches_to_the_running_slurm_jobs(slurm_lab, tmp_path):
    """`orch study run` of 4 trials (2 GPUs each) on the two Slurm nodes; the controller is killed (SIGKILL) while
    all four jobs run; `orch study run` again follows the same four jobs to their end: no trial lost, none re-run."""
    marker = tmp_path / "starts"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"defaults": {"launcher": "slurm", "workdir": str(tmp_path / "runs"),
                                                  "slurm": {"env": slurm_lab.env, "poll_s": 0.2}},
                                     "machines": [{"name": "sa"}, {"name": "sb"}]}))
    db_url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert orch("study", "create", "s", "--from", str(_study(tmp_path, marker)), "--db", db_url,
                cwd=tmp_path).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "orchestrator.cli.main", "study", "run", "s", "--db", db_url, "--fleet", str(fleet),
            "--plain"]
    first = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    db = Database(db_url)
    try:
        def four_streaming():
            with db.session() as s:
                rows = s.scalars(select(TrialRow).where(TrialRow.state == "running")).all()
            return rows if len(rows) == 4 and all(r.job_ref for r in rows) and len(marker.read_text().splitlines()) == 4 \
                else None

        running = wait_for(lambda: marker.is_file() and four_streaming(), 60, "four trials running under Slurm")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    refs = {r.number: r.job_ref for r in running}
    assert {j["JobId"]: j["JobState"] for j in slurm_lab.jobs() if j["JobId"] in refs.values()} == \
        {ref: "RUNNING" for ref in refs.values()}, "the jobs did not outlive their controller"
    second = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("re-attached to its running job") == 4, second.stdout
    rows = assert_agrees_with_optuna(db, "s")
    assert [(r.number, r.state, r.retry_of) for r in rows] == [(n, "complete", None) for n in range(4)]
    assert {r.number: r.job_ref for r in rows} == refs  # the same jobs, followed to their end
    assert len(marker.read_text().splitlines()) == 4  # four starts in all: nothing ran twice
    ours = [j for j in slurm_lab.jobs() if j.get("JobName", "").startswith("orch.s.")]
    assert len(ours) == 4 and {j["JobState"] for j in ours} == {"COMPLETED"}
    assert {r.machine for r in rows} == {"sa", "sb"}
    with db.session() as s:
        reattached = s.scalars(select(EventRow.trial_number).where(EventRow.kind == "trial.reattached")).all()
        steps = {r.number: s.scalars(select(MetricPointRow.step).where(MetricPointRow.trial_id == r.id,
                                                                        MetricPointRow.kind == "val")).all()
                 for r in rows}
    assert sorted(reattached) == [0, 1, 2, 3]
    assert all(sorted(v) == [25, 50, 75, 100] for v in steps.values()), steps  # the curve whole, each point once
    for row in rows:  # each log holds one run: one start line, one final line
        text = Path(row.log_path).read_text()
        assert text.count('"event": "start"') == 1 and text.count('"event": "final"') == 1, text


def test_orch_fleet_queue_shows_slurms_queue_with_orchs_trials_and_other_jobs(slurm_lab, tmp_path):
    """Slurm queues, orch shows it (issue 20, item 5): two trials that each take all of node sa's GPUs, submitted
    at once (one runs, Slurm holds the other PENDING for resources), and a job of someone else's on sb. `orch fleet
    queue` (and `orch fleet status` under its machines) lists all three from squeue: orch's with their study and
    trial, the other with its own name, each on its machine, the pending one with Slurm's reason."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"defaults": {"launcher": "slurm", "gpus": "auto", "slurm": {"env": slurm_lab.env}},
                                     "machines": [{"name": "sa"}, {"name": "sb"}]}))
    machine = _machine(slurm_lab, "sa", tmp_path)
    launcher = SlurmLauncher()
    foreign = slurm_lab.run("sbatch", "--parsable", "--job-name=someone-elses", "--nodelist=sb",
                            f"--output={tmp_path / 'other.out'}", "--wrap", "sleep 60").stdout.strip()
    handles = []
    try:
        assert launcher.probe(machine).gpu_count == 4
        handles += [launcher.start(JobSpec("qstudy", n, ["sleep", "60"], {}, timeout_s=120), machine,
                                  Slot("sa", 0, gpu_ids=(0, 1, 2, 3)), tmp_path / f"t{n}", queue.Queue())
                   for n in (1, 2)]
        wait_for(lambda: sorted(j.get("JobState") for j in slurm_lab.jobs()
                                if j["JobId"] in {h.job_id for h in handles}) == ["PENDING", "RUNNING"], 30,
                 "one of the two whole-node jobs to run and the other to wait")
        db = f"sqlite:///{tmp_path / 'o.db'}"
        result = orch("fleet", "queue", "--fleet", str(fleet), "--db", db, "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        jobs = {j["job"]: j for j in json.loads(result.stdout)["manager_queue"]}
        assert "error" not in str(jobs), jobs
        ours = sorted((jobs[h.job_id] for h in handles), key=lambda j: j["state"])
        assert [(j["state"], j["machine"], j["study"]) for j in ours] == [("PENDING", "sa", "qstudy"),
                                                                           ("RUNNING", "sa", "qstudy")]
        assert {j["trial"] for j in ours} == {1, 2} and ours[0]["reason"] in ("Resources", "Priority")
        assert ours[1]["started"] and ours[0]["started"] is None and "gpu:4" in (ours[1]["resources"] or "")
        other = jobs[foreign]
        assert (other["name"], other["machine"], other["study"], other["state"]) == ("someone-elses", "sb", None,
                                                                                     "RUNNING")
        text = orch("fleet", "queue", "--fleet", str(fleet), "--db", db, cwd=tmp_path).stdout
        pending = next(j for j in ours if j["state"] == "PENDING")
        assert f"slurm job {pending['job']} PENDING on sa" in text and f"study qstudy#{pending['trial']}" in text
        assert f"slurm job {foreign} RUNNING on sb: someone-elses" in text
        status = orch("fleet", "status", "--fleet", str(fleet), "--db", db, "--json", cwd=tmp_path)
        assert {j["job"] for j in json.loads(status.stdout)["queue"]["manager_queue"]} >= {foreign, *jobs}
    finally:
        for handle in handles:
            handle.cancel("test over")
        slurm_lab.run("scancel", foreign, check=False)
        launcher.close()
