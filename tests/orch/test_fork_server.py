"""The fork server (orchestrator/warm/forkserver.py) with real processes: the entry program, a server it spawns, and
trainers forked from it.

A preloaded module records each time it is imported: the second and third trainers find it imported (one import on
the machine). Each forked trainer is the job: its argv, cwd, environment (secrets too, which the server's own
environment never holds), stdout, stderr, umask and exit status; a SIGTERM to the job's process group reaches it, and
a trainer that ignores SIGTERM dies with its entry when the launcher kills the group. What cannot be forked starts as
before, with the reason in the `@@warm` report. `orch study run` of a study with `trainer.fork_server` forks trials 2
and 3 from the server the first spawned, and the real trainer (CPU, tiny preset) trains to a val_loss forked from a
server that imported torch. A forked trainer finds the compile keys (the hash of Triton's sources) the server computed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select as sql_select

from db import Database, TrialRow
from orchestrator.cli.fleet_view import fleet_status, render_fleet_status
from orchestrator.config.fleet_file import load_fleet
from orchestrator.warm.launch import MARK
from orchestrator.warm.report import log_report
from orchestrator.warm.stage import ENTRY, FORK_SERVER
from tests.conftest import REPO, STAND_IN, orch

PRELOADED = """import os, time
with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as f:
    f.write(f"{os.getpid()}\\n")
"""
TRAINER = """import gc, os, sys, preloaded_lib
print("trainer", os.getpid(), os.getsid(0), os.getcwd(), json.dumps(sys.argv[1:]), os.environ.get("JOB_SECRET"),
      oct(os.umask(0)), __name__, gc.isenabled(), flush=True)
print("to stderr", file=sys.stderr, flush=True)
print("secrets", os.environ.get("HF_TOKEN"), os.environ.get("TRITON_DECLARED_SECRET"), flush=True)
if sys.argv[1] == "raise":
    raise RuntimeError("the trainer failed")
if sys.argv[1] == "wait":  # until the test signals it
    import signal, time
    if sys.argv[2] == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(143)))
    print("waiting", flush=True)
    time.sleep(120)
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def machine(tmp_path):
    """A folder with the preloaded module and the trainer script; the plan of a job with a fork server."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "preloaded_lib.py").write_text(PRELOADED)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "train.py").write_text("import json\n" + TRAINER)

    def plan(preload=("preloaded_lib",), idle_s=60.0) -> Path:
        path = tmp_path / f"plan-{len(preload)}-{idle_s:g}.json"
        path.write_text(json.dumps({"v": 1, "root": str(tmp_path / "warm"), "code": "c0", "link": "data", "keep": 8,
                                    "data": [], "fork": {"program": str(FORK_SERVER), "preload": list(preload),
                                                         "idle_s": idle_s,
                                                         "secret_vars": ["TRITON_DECLARED_SECRET"]}}))
        return path

    servers: list[int] = []
    yield tmp_path, plan, servers
    for pid in servers:  # the servers outlive their jobs by design: end the ones this test started
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR", "TRITON"))}
    return {**env, "PYTHONPATH": str(tmp_path / "lib"), "PYTHONUNBUFFERED": "1", **extra}


def _start(tmp_path: Path, plan: Path, *command: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ENTRY), str(plan), "--", *command], cwd=tmp_path / "job",
                            env=env or _env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _report(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith(MARK))[len(MARK):])


def _gone(pid: int, timeout_s: float) -> bool:
    """Whether process `pid` ends within `timeout_s` (a pidfd: woken by its exit, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def test_trainers_forked_from_one_server_are_their_jobs(machine):
    tmp_path, plan, servers = machine
    python = sys.executable
    runs = []
    for code, secret in (("3", "s3cret-one"), ("0", "s3cret-two"), ("raise", "s3cret-three")):
        # HF_TOKEN and TRITON_DECLARED_SECRET have prefixes the server's environment takes (HF_, TRITON_); the
        # first looks like a credential, the second is declared one (the study's secret_env)
        env = _env(tmp_path, JOB_SECRET=secret, HF_TOKEN=f"hf-{secret}", TRITON_DECLARED_SECRET=f"tr-{secret}")
        proc = _start(tmp_path, plan(), python, "train.py", code, env=env)
        out, err = proc.communicate(timeout=60)
        runs.append((proc.returncode, out, err, _report(out)))
    states = [r[3]["fork"] for r in runs]
    servers.append(states[0]["server_pid"])
    assert [s["state"] for s in states] == ["forked"] * 3, states
    assert [s["spawned"] for s in states] == [True, False, False]
    assert len({s["server_pid"] for s in states}) == 1 and [s["forks"] for s in states] == [1, 2, 3]
    # the module the server preloaded was imported once, by the server, not by any trainer
    assert (tmp_path / "lib" / "imports.log").read_text().split() == [str(states[0]["server_pid"])]

    (code3, out3, err3, _), (code0, out0, err0, _), (code_raise, _, err_raise, _) = runs
    assert (code3, code0, code_raise) == (3, 0, 1)
    trainer = [line.split() for line in out0.splitlines() if line.startswith("trainer ")][0]
    pid, sid, cwd, argv, secret, umask, name, collects = trainer[1:]
    assert int(pid) == states[1]["pid"] and sid == pid  # a session (and process group) of its own
    assert cwd == str(tmp_path / "job") and json.loads(argv) == ["0"] and secret == "s3cret-two"
    assert umask == oct(_umask()) and name == "__main__" and collects == "True"  # the server's gc.disable is not theirs
    assert err0 == "to stderr\n" and "to stderr" in err3
    assert "RuntimeError: the trainer failed" in err_raise and "Traceback" in err_raise
    # the job's own variables reach its trainer through the request, never the server's environment
    server_env = Path(f"/proc/{states[0]['server_pid']}/environ").read_bytes()
    assert b"s3cret" not in server_env and b"PYTHONPATH=" in server_env
    assert "secrets hf-s3cret-two tr-s3cret-two" in out0.splitlines()


def test_trainers_started_together_share_one_server(machine):
    """Three jobs start at once on a machine without a server: each spawns one, one wins the socket, the others
    stand down, and all three trainers fork from the winner after its one import."""
    tmp_path, plan, servers = machine
    procs = [_start(tmp_path, plan(), sys.executable, "train.py", "0") for _ in range(3)]
    reports = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        reports.append(_report(stdout)["fork"])
    servers.extend({r["server_pid"] for r in reports})
    assert [r["state"] for r in reports] == ["forked"] * 3 and len({r["server_pid"] for r in reports}) == 1
    assert sorted(r["forks"] for r in reports) == [1, 2, 3]
    assert (tmp_path / "lib" / "imports.log").read_text().split() == [str(reports[0]["server_pid"])]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _until_waiting(proc: subprocess.Popen) -> dict:
    report = None
    for line in proc.stdout:
        if line.startswith(MARK):
            report = json.loads(line[len(MARK):])
        if line.strip() == "waiting":
            return report
    raise AssertionError(f"the trainer ended before waiting: {proc.wait()} {proc.stderr.read()}")


def test_a_signal_to_the_jobs_group_reaches_the_forked_trainer(machine):
    tmp_path, plan, servers = machine
    proc = _start(tmp_path, plan(), sys.executable, "train.py", "wait", "term")
    report = _until_waiting(proc)
    servers.append(report["fork"]["server_pid"])
    os.killpg(proc.pid, signal.SIGTERM)  # what a launcher's cancel does first
    assert proc.wait(timeout=30) == 143
    assert "got SIGTERM" in proc.stdout.read()
    assert _gone(report["fork"]["pid"], 10)

    # a trainer that ignores SIGTERM: the launcher kills the group after its grace; the entry dies, and so does it
    proc = _start(tmp_path, plan(), sys.executable, "train.py", "wait", "ignore")
    report = _until_waiting(proc)
    trainer = report["fork"]["pid"]
    os.killpg(proc.pid, signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1)  # the grace: the trainer ignores it, so the entry stands
    assert not _gone(trainer, 0)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert _gone(trainer, 10), "the forked trainer outlived its killed entry"
    assert not _gone(report["fork"]["server_pid"], 0)  # the server serves the next trial


def test_what_cannot_be_forked_starts_as_before_and_says_why(machine):
    tmp_path, plan, servers = machine
    out = subprocess.run([sys.executable, str(ENTRY), str(plan()), "--", "bash", "-c", "echo plain $JOB_SECRET"],
                         cwd=tmp_path / "job", env=_env(tmp_path, JOB_SECRET="x"), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "plain x"
    assert _report(out.stdout)["fork"] == {"state": "fresh", "why": "bash is neither a python interpreter nor torchrun"}

    # a preload that fails: the server says so, the trainer starts fresh and imports the module itself
    proc = _start(tmp_path, plan(preload=("preloaded_lib", "no_such_module_anywhere")), sys.executable, "train.py",
                  "0")
    stdout, _ = proc.communicate(timeout=60)
    fork = _report(stdout)["fork"]
    assert proc.returncode == 0 and fork["state"] == "fresh"
    assert "no_such_module_anywhere" in fork["why"] and "ModuleNotFoundError" in fork["why"]
    trainer_pid = next(line.split()[1] for line in stdout.splitlines() if line.startswith("trainer "))
    assert trainer_pid == str(proc.pid)  # exec'd: the entry's own process
    log = next((tmp_path / "warm" / "forkserver").glob("*.log")).read_text()
    servers += [int(p) for p in {line.split("pid ")[1].split(":")[0] for line in log.splitlines() if "pid " in line}]


def test_an_idle_server_exits(machine):
    tmp_path, plan, servers = machine
    proc = _start(tmp_path, plan(idle_s=0.5), sys.executable, "train.py", "0")
    stdout, _ = proc.communicate(timeout=60)
    server = _report(stdout)["fork"]["server_pid"]
    servers.append(server)
    assert proc.returncode == 0
    assert _gone(server, 20), "the server did not exit once idle"
    assert "idle for 0.5 s after 1 forks: exiting" in next((tmp_path / "warm" / "forkserver").glob("*.log")).read_text()


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (torch's compiler's kernels)")
def test_a_forked_trainer_finds_the_compile_keys_computed(machine):
    """The hash of Triton's sources and library that torch's compiler asks for at every process's first compile: the
    server computed it once, after its preload; the forked trainer finds it cached (and computes nothing)."""
    tmp_path, plan, servers = machine
    (tmp_path / "job" / "keys.py").write_text(
        "import time, triton.runtime.cache as cache\n"
        "before = cache.triton_key.cache_info().currsize\n"
        "began = time.monotonic(); key = cache.triton_key(); took = time.monotonic() - began\n"
        "print('keys', before, cache.triton_key.cache_info().misses, len(key), f'{took:.4f}', flush=True)\n")
    proc = _start(tmp_path, plan(preload=("triton.runtime.cache",)), sys.executable, "keys.py")
    stdout, stderr = proc.communicate(timeout=120)
    report = _report(stdout)
    servers.append(report["fork"]["server_pid"])
    assert proc.returncode == 0 and report["fork"]["state"] == "forked", (report, stderr)
    line = next(line.split() for line in stdout.splitlines() if line.startswith("keys "))
    # cached before the trainer asked; the one miss is the server's
    assert line[1:3] == ["1", "1"] and int(line[3]) > 0, line
    log = next((tmp_path / "warm" / "forkserver").glob("*.log")).read_text()
    assert "compile keys triton.runtime.cache.triton_key in " in log, log


def _servers_of(rows) -> set[int]:
    return {(log_report(r.log_path) or {}).get("fork", {}).get("server_pid") for r in rows} - {None}


def test_orch_study_run_forks_its_trials_from_the_machines_server(tmp_path):
    spec = {
        "trainer": {"command": ["{python}", str(STAND_IN), "--steps", "20"], "log_format": "orch",
                    "code_dir": str(STAND_IN.parent), "files": [STAND_IN.name],
                    "fork_server": {"preload": ["argparse", "random"], "idle_s": 30}},
        "parameters": {"stage1": {"type": "float", "low": 0.2, "high": 0.6, "step": 0.02}},
        "derived": {"rest": {"expr": "(1 - stage1) / 2", "min": 0.05}},
        "arguments": {"flags": {"--stage-durations": "{stage1:.4f},{rest:.4f},{rest:.4f}"}},
        "objective": {"minimize": "train_time_s", "subject_to": ["val_loss <= 3.5"]},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"max_trials": 3, "parallel": 1}, "timeout_s": 60,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({"machines": [{"name": "here", "launcher": "local", "gpus": "none",
                                                   "cpu_slots": 1, "workdir": str(tmp_path / "runs")}]}))
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert orch("study", "create", "s", "--from", str(tmp_path / "s.yaml"), "--db", url).returncode == 0
    run = orch("study", "run", "s", "--plain", "--fleet", str(fleet), "--db", url)
    assert run.returncode == 0, run.stderr[-2000:]
    db, rows = Database(url), []
    try:
        with db.session() as s:
            rows = s.scalars(sql_select(TrialRow).order_by(TrialRow.number)).all()
            forks = [(log_report(r.log_path) or {}).get("fork", {}) for r in rows]
            assert [r.state for r in rows] == ["complete"] * 3 and all(r.metrics.get("val_loss") for r in rows)
            assert [f.get("state") for f in forks] == ["forked"] * 3, forks
            assert [f["spawned"] for f in forks] == [True, False, False] and len(_servers_of(rows)) == 1
            # the pid the trial row tracks is the entry's, which stood for the trainer until it ended
            assert all(r.pid and r.pid != f["pid"] for r, f in zip(rows, forks))
        line = render_fleet_status(fleet_status(db, load_fleet(fleet)))
        assert f"fork server pid {forks[2]['server_pid']} (3 fork(s), preload " in line, line
    finally:
        db.dispose()
        for pid in _servers_of(rows):
            os.kill(pid, signal.SIGTERM)


def test_the_real_trainer_trains_forked_from_a_server_that_imported_torch(tmp_path):
    """Our trainer (CPU, tiny preset, eager) forked twice from a server whose preload is torch: both reach their
    val_loss, and the second's import phase is the server's (near zero)."""
    pytest.importorskip("torch")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"v": 1, "root": str(tmp_path / "warm"), "code": "c0", "link": "data", "keep": 8,
                                "data": [], "fork": {"program": str(FORK_SERVER), "preload": ["torch"],
                                                     "idle_s": 30}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    results = []
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, str(ENTRY), str(plan), "--", sys.executable, "-m", "trainer",
                              "--preset", "tiny", "--device", "cpu", "--threads", "1", "--compile", "0",
                              "--num-steps", "6", "--extension-steps", "0", "--val-every", "0", "--seed", seed],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        finals = [json.loads(line[len("@@metrics "):]) for line in out.stdout.splitlines()
                  if line.startswith("@@metrics ") and '"final"' in line]
        results.append((_report(out.stdout)["fork"], finals[-1]))
    os.kill(results[0][0]["server_pid"], signal.SIGTERM)
    assert [f["state"] for f, _ in results] == ["forked", "forked"]
    assert all(final["val_loss"] > 0 for _, final in results)
    assert results[1][1]["startup_s"]["import"] < 0.5  # torch was imported by the server


def test_the_programs_staged_on_machines_import_only_the_standard_library():
    """entry.py and forkserver.py run in the job's own interpreter (a container's, a remote machine's), which need
    not have the orchestrator's dependencies."""
    import ast

    for program in (ENTRY, FORK_SERVER):
        tree = ast.parse(program.read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
        assert names <= sys.stdlib_module_names and not relative, (program.name, names - sys.stdlib_module_names)


def test_a_server_carries_every_variable_torchs_compiler_configs_read_at_import():
    """A preloaded config module keeps what it read at import in every child: a variable it reads that the server's
    environment lacks gives forked trainers other compile keys than fresh ones (CXX on the H100 image: every forked
    trainer missed the FX graph cache). So the installed torch's config modules name no variable outside IMPORT_ENV,
    besides those read only when called (by then from the job's own environment)."""
    import importlib.util
    import re

    from orchestrator.warm.forkserver import IMPORT_ENV

    read = re.compile(r'(?:environ(?:\.get)?\(\s*|environ\[\s*|getenv\(\s*|env_name_(?:default|force)\s*=\s*)'
                      r'["\']([A-Z][A-Z0-9_]+)["\']')
    called = {"MAST_HPC_JOB_NAME", "ROLE_RANK"}  # torch/_inductor/config.py get_worker_log_path()
    seen = {}
    for module in ("torch._inductor.config", "torch._dynamo.config", "torch._functorch.config"):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, module
        seen[module] = set(read.findall(Path(spec.origin).read_text()))
    assert "CXX" in seen["torch._inductor.config"]  # the scan still sees the read that once cost the cache
    missed = {m: sorted(n for n in names - called if not IMPORT_ENV.match(n)) for m, names in seen.items()}
    assert not any(missed.values()), missed


def test_a_container_machine_starts_its_trainers_as_before(tmp_path):
    """A server inside a trial's container would end with it: on a machine with a container runtime the plan the
    entry program reads has no fork server (and none is staged); on a plain machine it has."""
    from orchestrator.jobs import JobSpec
    from orchestrator.launchers.local import LocalLauncher, LocalMachine
    from orchestrator.warm import prepare
    from orchestrator.warm.plan import ForkPlan, WarmPlan

    job = JobSpec(study="s", trial=0, argv=[sys.executable, "-m", "trainer"], env={}, timeout_s=60,
                  secret_env={"WANDB_KEY_X": "never-in-a-plan"},
                  warm=WarmPlan(code="c0", fork=ForkPlan(preload=("json",), idle_s=60.0)))
    plans = {}
    for runtime in ("none", "podman"):
        container = {"runtime": runtime, "image": "localhost/trainer:1"} if runtime != "none" else {}
        machine = LocalMachine(name=runtime, launcher="local", gpus="none", workdir=str(tmp_path / runtime),
                               container=container)
        prepared = prepare(LocalLauncher(), job, machine, str(tmp_path / runtime / "s" / "trial-0000"))
        plans[runtime] = json.loads(Path(prepared.argv[2]).read_text())
        staged = {p.name.split("-")[0] for p in (tmp_path / runtime / ".orch-warm" / "bin").iterdir()}
        assert staged == ({"entry", "forkserver"} if runtime == "none" else {"entry"})
    assert plans["none"]["fork"]["preload"] == ["json"] and "fork" not in plans["podman"]
    assert plans["none"]["fork"]["secret_vars"] == ["WANDB_KEY_X"]  # the name, to keep it from the server
    assert "never-in-a-plan" not in json.dumps(plans)


RANKS = """import os, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
total = torch.tensor([rank + 1.0])
dist.all_reduce(total)
# one write a line: the ranks run unbuffered (`python -u`, as torchrun starts them), and print's separate write of
# the newline would let the other rank's line in between
sys.stdout.write(f"rank {rank} of {world} local {os.environ['LOCAL_RANK']} sum {total.item():g} "
                 f"omp {os.environ.get('OMP_NUM_THREADS')} group {os.getpgid(0)}\\n")
dist.barrier()  # every rank here before any tears down (gloo aborts otherwise)
dist.destroy_process_group()
failing_code, failing_rank = int(sys.argv[1]), int(sys.argv[2])
if rank == failing_rank:
    sys.exit(failing_code)
if failing_code:
    time.sleep(120)  # the ranks' parent stops this one
"""


def test_a_single_node_torchrun_is_forked_as_torchrun_would_start_it(machine):
    """`torchrun --standalone --nproc_per_node=2 SCRIPT`: both ranks are forked from the server (one process group,
    torchrun's variables, a working gloo all-reduce); a rank that fails stops the other and the job's status is 1."""
    pytest.importorskip("torch")
    tmp_path, plan, servers = machine
    (tmp_path / "job" / "ranks.py").write_text(RANKS)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    ranks_plan = plan(preload=("torch", "torch.distributed"))
    proc = _start(tmp_path, ranks_plan, torchrun, "--standalone", "--nproc_per_node=2", "ranks.py", "0", "-1")
    stdout, stderr = proc.communicate(timeout=120)
    fork = _report(stdout)["fork"]
    servers.append(fork.get("server_pid"))
    assert proc.returncode == 0 and fork["state"] == "forked", stdout + stderr
    lines = sorted(line.split() for line in stdout.splitlines() if line.startswith("rank "))
    assert [(w[1], w[3], w[5], w[7], w[9]) for w in lines] == [("0", "2", "0", "3", "1"), ("1", "2", "1", "3", "1")]
    assert {w[11] for w in lines} == {str(fork["pid"])}  # one process group, the forked child's: a kill reaches all

    began = time.monotonic()
    proc = _start(tmp_path, ranks_plan, torchrun, "--standalone", "--nproc_per_node=2", "ranks.py", "3", "1")
    stdout, stderr = proc.communicate(timeout=120)
    assert _report(stdout)["fork"]["state"] == "forked"
    assert proc.returncode == 1 and "rank 1" in stderr and "exited with 3; stopping the other ranks" in stderr
    assert time.monotonic() - began < 60  # the other rank was stopped, not waited for (it sleeps 120 s)

    # a torchrun option the fork server does not do: started as before, and said why
    out = subprocess.run([sys.executable, str(ENTRY), str(ranks_plan), "--", torchrun, "--standalone",
                          "--nproc_per_node=2", "--max-restarts=1", "ranks.py", "0", "-1"], cwd=tmp_path / "job",
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert _report(out.stdout)["fork"] == {"state": "fresh",
                                           "why": "torchrun --max-restarts: the fork server does not restart workers"}
    assert out.returncode == 0 and sorted(line.split()[:4] for line in out.stdout.splitlines()
                                          if line.startswith("rank ")) == [["rank", "0", "of", "2"], ["rank", "1", "of", "2"]]
