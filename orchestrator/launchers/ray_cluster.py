"""`orch fleet up` / `orch fleet down`: start and stop the Ray nodes of the fleet's `launcher: ray` machines.

Each node is one `ray start --block` process: the head on the machine whose `host` is the host of `ray.address`,
every other machine joining it. A node offers the custom resource `machine:NAME` (what the ray launcher pins trials
with) and uses the machine's `host` as its node IP. It is started locally for a loopback host (or `ray.start:
local`), otherwise over SSH with the ssh launcher's verified connection (`ray.start: ssh` forces it).

The node's PID and its kernel start time go to `WORKDIR/.orch-ray/NAME.pid` on the machine, its output to
`NAME.log` beside it (a relative workdir is under the node's $HOME, as for trials). `down` sends SIGTERM to that
PID when its start time still matches (never `ray stop`, which kills every Ray process of the machine) and waits
for it to exit; the `--block` process then stops the node's other Ray processes. Both commands are idempotent.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config.errors import ConfigError, OrchError
from ..config.fleet import Fleet, Machine
from .ray_common import auth_env, machine_resource
from .remote_script import quote_path, remote_workdir

STATE_DIR = ".orch-ray"
#: the head's failure detection (GCS health checks): a dead node is noticed in about 5 s (Ray's default: ~15 s)
HEALTH_CHECK_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "5"}
STOP_TIMEOUT_S = 30.0


class ClusterError(OrchError):
    pass


@dataclass
class NodeResult:
    machine: str
    role: str  # head | worker
    action: str  # started | already up | stopped | already down
    pid: int | None = None
    where: str = ""  # local | ssh


# ---- the fleet's nodes ------------------------------------------------------------------------------------------
def ray_machines(fleet: Fleet) -> list[Machine]:
    machines = [m for m in fleet.machines if m.launcher == "ray"]
    if not machines:
        raise ConfigError("the fleet has no `launcher: ray` machine, so there is no Ray node to start or stop",
                          file=fleet.source, field="machines", fix="set `launcher: ray` and `ray: {address: ...}` "
                          "on the machines that form the Ray cluster")
    return machines


def head_machine(fleet: Fleet, machines: list[Machine]) -> Machine:
    host = machines[0].ray.address.rsplit(":", 1)[0]
    for machine in machines:
        if machine.host == host:
            return machine
    raise ConfigError(f"no ray machine has host {host}, the head of ray.address {machines[0].ray.address}",
                      file=fleet.source, field="ray.address", fix="point ray.address at one of the ray machines' "
                      "host (that machine runs the head node)")


def start_mode(machine: Machine) -> str:
    if machine.ray.start != "auto":
        return machine.ray.start
    try:
        return "local" if ipaddress.ip_address(machine.host).is_loopback else "ssh"
    except ValueError:
        return "local" if machine.host == "localhost" else "ssh"


def node_argv(machine: Machine, head: bool, where: str) -> list[str]:
    spec = machine.ray
    ray_bin = Path(sys.executable).parent / "ray"
    command = spec.ray_command or ([str(ray_bin)] if where == "local" and ray_bin.exists() else ["ray"])
    argv = [*command, "start", "--block", f"--node-ip-address={machine.host}",
            "--resources=" + json.dumps({machine_resource(machine): 1}), "--disable-usage-stats"]
    if head:
        argv += ["--head", f"--port={spec.address.rsplit(':', 1)[1]}", "--include-dashboard=false"]
    else:
        argv += [f"--address={spec.address}"]
    if machine.gpus == "none":
        argv += ["--num-gpus=0"]
    if spec.temp_dir:
        argv += [f"--temp-dir={spec.temp_dir}"]
    return argv + list(spec.start_args)


def node_env(machine: Machine) -> dict[str, str]:
    return {"RAY_USAGE_STATS_ENABLED": "0", **HEALTH_CHECK_ENV, **auth_env(machine.ray), **machine.ray.env}


def state_dir(machine: Machine, home: str) -> str:
    return f"{remote_workdir(machine.workdir, home)}/{STATE_DIR}"


# ---- local nodes --------------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of `pid`, None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().decode(errors="replace").rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _alive(pid: int, start: str) -> bool:
    stat = _stat(pid)
    if stat is not None and stat[0] == "Z":  # a zombie child of this process (in-process callers): reap it
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return stat is not None and stat[1] == start


class LocalNode:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.dir = Path(state_dir(machine, os.path.expanduser("~")))
        self.pid_file, self.log_file = self.dir / f"{machine.name}.pid", self.dir / f"{machine.name}.log"

    def running(self) -> int | None:
        try:
            pid, start = self.pid_file.read_text().split()
        except (OSError, ValueError):
            return None
        return int(pid) if _alive(int(pid), start) else None

    def start(self, argv: list[str], env: dict[str, str]) -> tuple[int, bool]:
        pid = self.running()
        if pid is not None:
            return pid, False
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            try:
                proc = subprocess.Popen(argv, env={**os.environ, **env}, cwd=self.dir, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise ClusterError(f"machine {self.machine.name!r}: cannot run {argv[0]!r}: {exc} (fix: install "
                                   "ray on the machine or set `ray.ray_command`)") from None
        stat = _stat(proc.pid)
        self.pid_file.write_text(f"{proc.pid} {stat[1] if stat else '?'}\n")
        return proc.pid, True

    def stop(self, timeout_s: float) -> int | None:
        pid = self.running()
        if pid is None:
            return None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.running() is not None:
            if time.monotonic() > deadline:
                raise ClusterError(f"machine {self.machine.name!r}: Ray node pid {pid} did not stop within "
                                   f"{timeout_s:g} s of SIGTERM (fix: look at {self.log_file}; kill it by pid)")
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return pid

    def log_tail(self) -> str:
        try:
            return self.log_file.read_bytes()[-1500:].decode(errors="replace")
        except OSError:
            return ""


# ---- nodes over SSH -----------------------------------------------------------------------------------------------
_STAT_OF = "st() { sed -E 's/^.*\\) //' /proc/$1/stat 2>/dev/null | cut -d' ' -f20; }"


class SshNode:
    def __init__(self, machine: Machine) -> None:
        from .ssh import connect  # paramiko: only for nodes started over SSH

        self.machine = machine
        self.client = connect(machine)
        home = self._run('printf %s "$HOME"')[1]
        self.dir = state_dir(machine, home)
        self.log_file = f"{self.dir}/{machine.name}.log"

    def _run(self, command: str, timeout_s: float = 60.0) -> tuple[int, str]:
        try:
            _, stdout, _ = self.client.exec_command(command, timeout=timeout_s)
            out = stdout.read().decode(errors="replace")
            return stdout.channel.recv_exit_status(), out
        except Exception as exc:  # noqa: BLE001 - paramiko and socket errors
            raise ClusterError(f"machine {self.machine.name!r}: command over SSH failed: {exc}") from None

    def _pid_check(self) -> str:
        return (f"{_STAT_OF}\nD={quote_path(self.dir)}\nP=\"$D\"/{shlex.quote(self.machine.name)}.pid\n"
                'pid=; if [ -s "$P" ]; then read -r pid start < "$P"; '
                '[ -n "$pid" ] && [ "$(st "$pid")" = "$start" ] || pid=; fi\n')

    def running(self) -> int | None:
        _, out = self._run(self._pid_check() + 'echo "orch-pid ${pid:-none}"')
        value = out.rsplit("orch-pid ", 1)[-1].strip()
        return int(value) if value.isdigit() else None

    def start(self, argv: list[str], env: dict[str, str]) -> tuple[int, bool]:
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        script = (self._pid_check() + 'if [ -n "$pid" ]; then echo "orch-up old $pid"; exit 0; fi\n'
                  'mkdir -p -- "$D" && cd -- "$D" || exit 97\n' + exports
                  + f"setsid nohup {' '.join(shlex.quote(a) for a in argv)} >> {shlex.quote(self.machine.name)}.log"
                  " 2>&1 < /dev/null &\n"
                  'pid=$!; echo "$pid $(st "$pid")" > "$P"; echo "orch-up new $pid"\n')
        status, out = self._run(f"bash -c {shlex.quote(script)}")
        words = out.rsplit("orch-up ", 1)[-1].split()
        if status != 0 or len(words) != 2 or not words[1].isdigit():
            raise ClusterError(f"machine {self.machine.name!r}: could not start the Ray node over SSH "
                               f"(status {status}): {out.strip()[-500:]}")
        return int(words[1]), words[0] == "new"

    def stop(self, timeout_s: float) -> int | None:
        ticks = int(timeout_s * 10)
        script = (self._pid_check() + 'if [ -z "$pid" ]; then echo "orch-down none"; exit 0; fi\n'
                  'kill -TERM "$pid"; i=0\n'
                  f'while [ "$(st "$pid")" = "$start" ] && [ "$i" -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done\n'
                  'if [ "$(st "$pid")" = "$start" ]; then echo "orch-down stuck $pid"; exit 1; fi\n'
                  'rm -f -- "$P"; echo "orch-down stopped $pid"\n')
        status, out = self._run(f"bash -c {shlex.quote(script)}", timeout_s=timeout_s + 30)
        words = out.rsplit("orch-down ", 1)[-1].split()
        if words[:1] == ["none"]:
            return None
        if status != 0 or words[:1] != ["stopped"]:
            raise ClusterError(f"machine {self.machine.name!r}: the Ray node did not stop within {timeout_s:g} s of "
                               f"SIGTERM: {out.strip()[-300:]} (fix: look at {self.log_file} on the machine)")
        return int(words[1])

    def log_tail(self) -> str:
        return self._run(f"tail -c 1500 {quote_path(self.log_file)} 2>/dev/null")[1]

    def close(self) -> None:
        self.client.close()


def _node(machine: Machine):
    return LocalNode(machine) if start_mode(machine) == "local" else SshNode(machine)


# ---- up / down ----------------------------------------------------------------------------------------------------
def _wait_for_port(address: str, node, deadline: float) -> None:
    host, port = address.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if node.running() is None:
                raise ClusterError(f"the Ray head on {node.machine.name!r} exited at start:\n{node.log_tail()}"
                                   "\n(fix: see the log above; is the port taken?)") from None
            if time.monotonic() > deadline:
                raise ClusterError(f"the Ray head on {node.machine.name!r} does not listen on {address} yet "
                                   f"(its log:\n{node.log_tail()})") from None
            time.sleep(0.2)


def _wait_registered(machines: list[Machine], nodes: dict, deadline: float) -> None:
    from .ray_common import connect, node_of

    connect(machines[0].ray)
    missing = list(machines)
    while missing:
        missing = [m for m in missing if node_of(m) is None]
        for machine in missing:
            if nodes[machine.name].running() is None:
                raise ClusterError(f"the Ray node of {machine.name!r} exited before it joined the cluster:\n"
                                   f"{nodes[machine.name].log_tail()}")
        if missing and time.monotonic() > deadline:
            raise ClusterError(f"Ray nodes of {', '.join(m.name for m in missing)} did not join the cluster at "
                               f"{machines[0].ray.address} within the wait (fix: see {STATE_DIR}/NAME.log on them)")
        if missing:
            time.sleep(0.3)


def fleet_up(fleet: Fleet, *, timeout_s: float = 90.0, report=lambda result: None) -> list[NodeResult]:
    """Start every ray machine's node (the head first) that is not running; wait until all have joined."""
    machines = ray_machines(fleet)
    head = head_machine(fleet, machines)
    ordered = [head] + [m for m in machines if m is not head]
    deadline = time.monotonic() + timeout_s
    nodes, results = {}, []
    try:
        for machine in ordered:
            node = nodes[machine.name] = _node(machine)
            is_head = machine is head
            pid, started = node.start(node_argv(machine, is_head, start_mode(machine)), node_env(machine))
            result = NodeResult(machine.name, "head" if is_head else "worker", "started" if started else "already up",
                                pid, start_mode(machine))
            if is_head:
                _wait_for_port(machine.ray.address, node, deadline)
            results.append(result)
            report(result)
        _wait_registered(ordered, nodes, deadline)
    finally:
        for node in nodes.values():
            getattr(node, "close", lambda: None)()
    return results


def fleet_down(fleet: Fleet, *, timeout_s: float = STOP_TIMEOUT_S, report=lambda result: None) -> list[NodeResult]:
    """Stop every ray machine's node by its recorded PID: the workers first, then the head."""
    machines = ray_machines(fleet)
    head = head_machine(fleet, machines)
    results, errors = [], []
    for machine in [m for m in machines if m is not head] + [head]:
        try:
            node = _node(machine)
            try:
                pid = node.stop(timeout_s)
            finally:
                getattr(node, "close", lambda: None)()
        except OrchError as exc:  # the other nodes are still stopped
            errors.append(str(exc))
            continue
        result = NodeResult(machine.name, "head" if machine is head else "worker",
                            "stopped" if pid is not None else "already down", pid, start_mode(machine))
        results.append(result)
        report(result)
    if errors:
        raise ClusterError("\n".join(errors))
    return results


__all__ = ["fleet_up", "fleet_down", "NodeResult", "ClusterError", "node_argv", "node_env", "start_mode"]
