"""SSH launcher (paramiko): runs each trial on a remote machine, optionally in a container.

- Authentication by key (`identity_file`); host keys are always verified against the machine's
  `known_hosts`: an unknown or changed key is refused with an OrchError naming the machine, the
  fingerprint and the fix (`orch fleet trust NAME`).
- One SSH connection per machine, shared by all its trials (paramiko's transport is thread-safe;
  connection creation is serialised per machine). A watchdog pings every `keepalive_s` (an OpenSSH
  `keepalive@openssh.com` global request that wants a reply); no answer within `dead_after_s`, or a closed
  transport, marks the connection dead: every trial on it ends with ExitEvent(error="connection lost: ...").
- The job runs under `remote_script.job_script` (read from the channel's stdin, so secrets are in no argv):
  its own process group, killed (TERM, then KILL) when the channel closes or the connection dies.
  `cancel()` closes the channel's stdin; the remote watcher does the killing even if the job ignores TERM.
- Logs: the job's merged stdout/stderr stream to the controller's queue line by line, to the local
  `train.log` in the trial directory the controller passes (recovery parses it), and to `job.log` in the
  remote trial directory (`machine.workdir/STUDY/trial-NNNN`, relative paths are under the remote $HOME).
- Machine fields (`SshMachine`): `host`, `port`, `user`, `identity_file`, `known_hosts` (required); the ray
  launcher's machines have the same ones (`SshAccess`: `orch fleet up` starts their nodes over SSH).
- Jobs die with their controller (the channel closes: the remote watcher kills the group), so there is nothing to
  re-attach to after a restart (`reattach` returns None).
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import posixpath
import queue
import re
import shlex
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import paramiko
from pydantic import Field, model_validator

from .. import warm
from ..config.errors import OrchError
from ..config.fleet import Capability, Machine, User
from ..config.validation import FIX_MARK
from ..config.yaml_source import YamlDoc
from ..gpu import gpu_query_argv, parse_nvidia_smi
from ..records import JobSpec
from .base import Event, ExitEvent, JobHandle, JobRecord, Launcher, LineEvent, MachineInfo, Slot, machine_info
from .containers import PodmanOptions, container_command, containerized_env, job_env, parse_image_id
from ..records import MAX_LINE_BYTES
from .remote_script import ScriptError, alive_check, bootstrap_command, job_script, remote_workdir, trial_directory

KEEPALIVE_S = float(os.environ.get("ORCH_SSH_KEEPALIVE_S", "5"))
DEAD_AFTER_S = float(os.environ.get("ORCH_SSH_DEAD_AFTER_S", "10"))
CONNECT_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 30.0
KILL_GRACE_S = 5.0


class SshAccess(Machine):
    """How a machine is reached over SSH: address, user, key, and the known_hosts file its host key is checked
    against (host keys are always verified)."""

    port: int = Field(default=22, ge=1, le=65535)
    user: User | None = None
    identity_file: str | None = None
    known_hosts: str | None = None

    @classmethod
    def check_fleet(cls, doc: YamlDoc, entries: list[tuple[int, Machine, dict]], defaults: dict) -> None:
        """The identity file the controller itself reads for a machine: a missing one is the machine's configuration
        error, named when the fleet loads (before anything is written), not `no reachable machine` after probing."""
        for index, machine, raw in entries:
            if not machine.identity_file:
                continue
            path = Path(os.path.expanduser(machine.identity_file))
            if not path.is_file():
                where = ("machines", index, "identity_file") if "identity_file" in raw else ("defaults", "identity_file")
                raise doc.error(where, f"machine {machine.name!r}: identity file {machine.identity_file} "
                                + ("is not a file" if path.exists() else "does not exist"),
                                fix="point identity_file at the private key whose public key is in the machine's "
                                "authorized_keys (a path on this machine; ~ is expanded)")


class SshMachine(SshAccess):
    """A `launcher: ssh` machine."""

    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.HOST_KEYS, Capability.RUN_COMMAND})
    launcher: Literal["ssh"] = "ssh"

    @model_validator(mode="after")
    def _known_hosts_needed(self) -> "SshMachine":
        if not self.known_hosts:
            raise ValueError(f"an ssh machine needs known_hosts: host keys are always verified{FIX_MARK}add "
                             "`known_hosts: PATH` (`orch fleet trust NAME` records a key)")
        return self


def probe_command(nvidia_smi: str = "nvidia-smi") -> str:
    """A probe's command: the usable cores (honours the sshd's CPU affinity), then nvidia-smi's CSV."""
    return ('printf "orch-cpus %s\\n" "$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"; '
            + shlex.join(gpu_query_argv(nvidia_smi)))


class SshError(OrchError):
    """Cannot reach or use an ssh machine."""


class HostKeyError(SshError):
    pass


class UnknownHostKey(HostKeyError):
    pass


class ChangedHostKey(HostKeyError):
    pass


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: SHA256:base64 without padding (what `ssh-keygen -lf` prints)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def host_entry(machine: Machine) -> str:
    """The known_hosts name of a machine: `host`, or `[host]:port` off port 22 (as OpenSSH and paramiko look it up)."""
    return machine.host if machine.port == 22 else f"[{machine.host}]:{machine.port}"


def _where(machine: Machine) -> str:
    return f"ssh machine {machine.name!r} ({machine.user + '@' if machine.user else ''}{machine.host}:{machine.port})"


def _known_hosts_path(machine: Machine) -> Path:
    if not machine.known_hosts:
        raise HostKeyError(f"{_where(machine)} has no known_hosts file: host keys are always verified "
                           f"(fix: set `known_hosts: PATH` and run `orch fleet trust {machine.name}`)")
    return Path(os.path.expanduser(machine.known_hosts))


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """paramiko's RejectPolicy, with a message that names the machine, the fingerprint and the fix."""

    def __init__(self, machine: Machine, known_hosts: Path) -> None:
        self.machine, self.known_hosts = machine, known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        raise UnknownHostKey(f"{_where(self.machine)}: unknown host key {key.get_name()} {fingerprint(key)}: it is not "
                             f"in {self.known_hosts} (fix: check the fingerprint on the machine with "
                             f"`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`, then run `orch fleet trust {self.machine.name}`)")


# ---- one connection per machine --------------------------------------------------------------------------------
class _Connection:
    def __init__(self, machine: Machine, client: paramiko.SSHClient, keepalive_s: float, dead_after_s: float) -> None:
        self.machine = machine
        self.client = client
        self.transport: paramiko.Transport = client.get_transport()
        self.keepalive_s, self.dead_after_s = keepalive_s, dead_after_s
        self.error: str | None = None
        self.closed = threading.Event()
        self.home: str | None = None
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name=f"ssh-watchdog-{machine.name}")
        self._watchdog.start()

    def alive(self) -> bool:
        return not self.closed.is_set() and self.transport.is_active()

    def lost(self, reason: str) -> None:
        """Mark the connection dead and close it: every channel on it ends (their readers report the loss)."""
        if self.error is None:
            self.error = reason
        self.closed.set()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a broken transport may raise anything
            pass

    def _watch(self) -> None:
        while not self.closed.wait(self.keepalive_s):
            if not self.transport.is_active():
                self.lost("the SSH connection closed")
                return
            answered = threading.Event()

            def _ping() -> None:
                try:
                    self.transport.global_request("keepalive@openssh.com", wait=True)
                except Exception:  # noqa: BLE001
                    return
                answered.set()

            threading.Thread(target=_ping, daemon=True, name=f"ssh-ping-{self.machine.name}").start()
            if not answered.wait(self.dead_after_s) or not self.transport.is_active():
                if not self.closed.is_set():
                    self.lost(f"no answer to a keepalive within {self.dead_after_s:g} s" if self.transport.is_active()
                              else "the SSH connection closed")
                return

    def run(self, command: str, timeout_s: float = 30.0) -> tuple[int, str]:
        """Run a short command; (exit status, stdout+stderr)."""
        try:
            channel = self.transport.open_session(timeout=timeout_s)
            channel.settimeout(timeout_s)
            channel.set_combine_stderr(True)
            channel.exec_command(command)
            chunks = []
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                chunks.append(data)
            status = channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(f"{_where(self.machine)}: command failed: {exc or type(exc).__name__}"
                           + (f" ({self.error})" if self.error else "")) from None
        return status, b"".join(chunks).decode("utf-8", errors="replace")

    def remote_home(self) -> str:
        if self.home is None:
            status, out = self.run('printf %s "$HOME"')
            if status != 0 or not out.startswith("/"):
                raise SshError(f"{_where(self.machine)}: cannot read the remote $HOME (got {out[-200:]!r})")
            self.home = out.strip()
        return self.home


def connect(machine: Machine, timeout_s: float = CONNECT_TIMEOUT_S) -> paramiko.SSHClient:
    """An authenticated SSHClient whose host key was verified against the machine's known_hosts."""
    known_hosts = _known_hosts_path(machine)
    if not known_hosts.is_file():
        raise UnknownHostKey(f"{_where(machine)}: known_hosts file {known_hosts} does not exist "
                             f"(fix: run `orch fleet trust {machine.name}` to record the machine's host key)")
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(str(known_hosts))
    except (OSError, paramiko.SSHException) as exc:
        raise HostKeyError(f"{_where(machine)}: cannot read known_hosts {known_hosts}: {exc} (fix: repair or remove "
                           f"the file, then `orch fleet trust {machine.name}`)") from None
    client.set_missing_host_key_policy(_RefuseUnknown(machine, known_hosts))
    identity = os.path.expanduser(machine.identity_file) if machine.identity_file else None
    if identity and not Path(identity).is_file():
        raise SshError(f"{_where(machine)}: identity_file {identity} does not exist (fix: point identity_file at the "
                       "private key whose public key is in the machine's authorized_keys)")
    try:
        client.connect(machine.host, port=machine.port, username=machine.user or getpass.getuser(),
                       key_filename=identity, look_for_keys=identity is None, allow_agent=identity is None,
                       timeout=timeout_s, banner_timeout=timeout_s, auth_timeout=timeout_s)
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise ChangedHostKey(
            f"{_where(machine)}: HOST KEY CHANGED: the machine offered {exc.key.get_name()} {fingerprint(exc.key)} but "
            f"{known_hosts} has {fingerprint(exc.expected_key)} for {host_entry(machine)}; someone may be intercepting "
            f"the connection (fix: if the machine was reinstalled, verify the new fingerprint on it, then run "
            f"`orch fleet trust {machine.name} --replace`)") from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise SshError(f"{_where(machine)}: authentication failed: {exc} (fix: check `user` and `identity_file`, "
                       "and that the public key is in the machine's authorized_keys)") from None
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise SshError(f"{_where(machine)}: cannot connect: {exc or type(exc).__name__} (fix: check host, port and "
                       "that sshd runs there; `orch fleet status` shows every machine)") from None
    return client


# ---- trust (orch fleet trust NAME) ------------------------------------------------------------------------------
@dataclass
class TrustResult:
    machine: str
    entry: str
    key_type: str
    fingerprint: str
    status: str  # "added" | "already trusted" | "replaced"
    known_hosts: str


def fetch_host_key(machine: Machine, timeout_s: float = CONNECT_TIMEOUT_S) -> paramiko.PKey:
    """The host key the machine offers (key exchange only: no authentication)."""
    try:
        sock = socket.create_connection((machine.host, machine.port), timeout=timeout_s)
    except OSError as exc:
        raise SshError(f"{_where(machine)}: cannot connect: {exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout_s)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise SshError(f"{_where(machine)}: SSH handshake failed: {exc or type(exc).__name__}") from None
    finally:
        transport.close()


def trust_host(machine: Machine, *, replace: bool = False, expect: str | None = None) -> TrustResult:
    """Record the machine's host key in its known_hosts. A different key already recorded is refused unless
    `replace`; `expect` (a SHA256:... fingerprint checked out of band) must match the offered key."""
    known_hosts = _known_hosts_path(machine)
    key = fetch_host_key(machine)
    fp, entry = fingerprint(key), host_entry(machine)
    result = TrustResult(machine.name, entry, key.get_name(), fp, "added", str(known_hosts))
    if expect is not None and expect.strip() != fp:
        raise HostKeyError(f"{_where(machine)}: offered host key {fp} does not match the expected {expect.strip()} "
                           "(fix: check the fingerprint on the machine; nothing was recorded)")
    hostkeys = paramiko.HostKeys()
    if known_hosts.is_file():
        hostkeys.load(str(known_hosts))
    recorded = hostkeys.lookup(entry) or {}
    if recorded.get(key.get_name()) == key:
        result.status = "already trusted"
        return result
    if recorded:
        if not replace:
            old = ", ".join(f"{t} {fingerprint(k)}" for t, k in recorded.items())
            raise ChangedHostKey(f"{_where(machine)}: {known_hosts} already has a different key for {entry} ({old}); "
                                 f"the machine now offers {key.get_name()} {fp} (fix: verify the new fingerprint on the "
                                 f"machine, then run `orch fleet trust {machine.name} --replace`)")
        kept = [e for e in hostkeys._entries if entry not in e.hostnames and
                not any(h.startswith("|1|") and paramiko.HostKeys.hash_host(entry, h) == h for h in e.hostnames)]
        hostkeys._entries = kept
        hostkeys.save(str(known_hosts))
        result.status = "replaced"
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    prefix = ""
    if known_hosts.is_file() and known_hosts.stat().st_size:
        with open(known_hosts, "rb") as f:
            f.seek(-1, os.SEEK_END)
            prefix = "" if f.read(1) == b"\n" else "\n"
    with open(known_hosts, "a") as f:
        f.write(f"{prefix}{entry} {key.get_name()} {key.get_base64()}\n")
    return result


# ---- jobs ------------------------------------------------------------------------------------------------------
class SshJob(JobHandle):
    def __init__(self, key: int, channel: paramiko.Channel, conn: _Connection, workdir: Path, log_path: Path,
                 remote_dir: str, command: list[str], image_id: str | None, kill_grace_s: float) -> None:
        self.key, self.channel, self.conn = key, channel, conn
        self.workdir, self.log_path, self.remote_dir, self.command = workdir, log_path, remote_dir, command
        self.container_image_id = image_id
        self.pid = None  # the remote pid is in REMOTE_DIR/.orch-job.pid; local pid checks must not see it
        self.pid_start = None
        self.kill_grace_s = kill_grace_s
        self.done = threading.Event()
        self.cancel_reason: str | None = None
        self._cancelled = threading.Event()

    def cancel(self, reason: str) -> None:
        """EOF on the job's stdin: the remote watcher kills the process group (TERM, KILL after the grace)."""
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self.cancel_reason = reason
        try:
            self.channel.shutdown_write()
        except Exception:  # noqa: BLE001 - a dead connection: the remote side kills the job itself
            pass

        def _backstop() -> None:  # the remote side never answered: stop waiting for it
            if not self.done.wait(self.kill_grace_s + 15.0):
                try:
                    self.channel.close()
                except Exception:  # noqa: BLE001
                    pass

        threading.Thread(target=_backstop, daemon=True, name=f"ssh-cancel-{self.key}").start()


def _pump(job: SshJob, log_file, events: "queue.Queue[Event]") -> None:
    error = None
    pending = b""
    cut = False  # the start of an overlong line went to the parser: drop the rest of it (the log keeps it whole)
    try:
        while True:
            data = job.channel.recv(65536)
            if not data:
                break
            log_file.write(data)
            log_file.flush()
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if cut:
                    cut = False
                    continue
                events.put(LineEvent(job.key, (line + b"\n").decode("utf-8", errors="replace")))
            if len(pending) > MAX_LINE_BYTES:  # bounded memory for a line that never ends
                if not cut:
                    events.put(LineEvent(job.key, pending[:MAX_LINE_BYTES].decode("utf-8", errors="replace")))
                cut, pending = True, b""
    except Exception as exc:  # noqa: BLE001 - socket errors, paramiko errors: all mean the stream ended
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if pending and not cut:
            events.put(LineEvent(job.key, pending.decode("utf-8", errors="replace")))
        status = job.channel.recv_exit_status() if error is None else -1
        returncode: int | None = status if status >= 0 else None
        launcher_error = None
        if returncode is None:
            reason = job.conn.error or error or ("the channel closed without an exit status"
                                                  if job.conn.alive() else "the SSH connection closed")
            launcher_error = f"connection lost: {job.conn.machine.name}: {reason}"
            if job.cancel_reason and job.conn.alive():
                launcher_error = f"cancelled ({job.cancel_reason}); no exit status from the machine"
            log_file.write(f"orch: {launcher_error}\n".encode())
        log_file.close()
        try:
            job.channel.close()
        except Exception:  # noqa: BLE001
            pass
        job.done.set()
        events.put(ExitEvent(job.key, returncode, launcher_error))


class SshLauncher(Launcher):
    name = "ssh"
    machine_type = SshMachine

    def __init__(self, *, keepalive_s: float = KEEPALIVE_S, dead_after_s: float = DEAD_AFTER_S,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, kill_grace_s: float = KILL_GRACE_S,
                 podman: PodmanOptions | None = None, probe_timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.keepalive_s, self.dead_after_s = keepalive_s, dead_after_s
        self.connect_timeout_s, self.kill_grace_s = connect_timeout_s, kill_grace_s
        self.probe_timeout_s = probe_timeout_s
        self.podman = podman or PodmanOptions.from_env()
        self._lock = threading.Lock()
        self._machine_locks: dict[str, threading.Lock] = {}
        self._connections: dict[str, _Connection] = {}

    @classmethod
    def for_status(cls, probe_timeout_s: float) -> "SshLauncher":
        return cls(connect_timeout_s=probe_timeout_s, probe_timeout_s=probe_timeout_s)

    # -- connections
    def connection(self, machine: Machine) -> _Connection:
        with self._lock:
            lock = self._machine_locks.setdefault(machine.name, threading.Lock())
        with lock:
            conn = self._connections.get(machine.name)
            if conn is not None and conn.alive():
                return conn
            if conn is not None:
                conn.lost(conn.error or "replaced by a new connection")
            client = connect(machine, self.connect_timeout_s)
            conn = _Connection(machine, client, self.keepalive_s, self.dead_after_s)
            self._connections[machine.name] = conn
            return conn

    def close(self) -> None:
        with self._lock:
            conns, self._connections = list(self._connections.values()), {}
        for conn in conns:
            conn.closed.set()
            try:
                conn.client.close()
            except Exception:  # noqa: BLE001
                pass

    # -- probe
    def probe(self, machine: Machine) -> MachineInfo:
        """One round trip: the machine's usable cores (`nproc`), then its GPUs (nvidia-smi; none: CPU slots)."""
        try:
            conn = self.connection(machine)
            status, out = conn.run(probe_command(machine.nvidia_smi), timeout_s=self.probe_timeout_s)
        except OrchError as exc:
            return MachineInfo(reachable=False, error=str(exc))
        cpus = re.search(r"^orch-cpus (\d+)$", out, re.MULTILINE)
        return machine_info(machine, parse_nvidia_smi(out) if status == 0 else [],  # 127: no nvidia-smi
                            cpu_count=int(cpus.group(1)) if cpus else None)

    def run_command(self, machine: Machine, argv: list[str], timeout_s: float = 30.0) -> tuple[int, str]:
        return self.connection(machine).run(shlex.join(argv), timeout_s=timeout_s)

    def job_alive(self, record: JobRecord, machine: Machine) -> bool:
        """The job's process group on the machine (its pid file in the trial directory): the wrapper kills it when
        its controller's session ends, after its grace period."""
        argv = alive_check(trial_directory(machine.workdir, record.study, record.trial))
        status, _ = self.run_command(machine, argv, timeout_s=self.probe_timeout_s)
        return status == 0

    # -- warm files (orchestrator/warm)
    def stage(self, machine: Machine, root: str, items: list) -> None:
        """One command lists the items the machine lacks; each is then streamed through its own channel into a
        temporary file (`cat`), checked against its digest while it is sent, and renamed into place."""
        from ..warm.stage import missing_argv, parse_missing

        conn = self.connection(machine)
        status, out = conn.run(shlex.join(missing_argv(root, items)), timeout_s=60)
        if status != 0:
            raise SshError(f"{_where(machine)}: cannot read the staged files under {root}: {out.strip()[-300:]} "
                           "(fix: check the machine's workdir)")
        for item in parse_missing(out, items):
            self._push(conn, machine, root, item)

    def _push(self, conn: _Connection, machine: Machine, root: str, item) -> None:
        from ..warm.stage import StageError, part_path, push_parts

        dest, part = f"{root}/{item.dest}", part_path(root, item)
        try:
            channel = conn.transport.open_session(timeout=self.connect_timeout_s)
            channel.set_combine_stderr(True)
            channel.exec_command(f"mkdir -p -- {shlex.quote(posixpath.dirname(dest))} && exec cat > {shlex.quote(part)}")
            try:
                for block in push_parts(item):
                    channel.sendall(block)
            except StageError:
                channel.close()
                conn.run(shlex.join(["rm", "-f", "--", part]))
                raise
            channel.shutdown_write()
            said = b"".join(iter(lambda: channel.recv(65536), b""))
            status = channel.recv_exit_status()
            channel.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshError(f"{_where(machine)}: cannot stage {item.what or item.dest} to {dest}: "
                           f"{exc or type(exc).__name__}") from None
        if status == 0:
            status, said_text = conn.run(shlex.join(["mv", "-f", "--", part, dest]))
        else:
            said_text = said.decode("utf-8", errors="replace")
        if status != 0:
            conn.run(shlex.join(["rm", "-f", "--", part]))
            raise SshError(f"{_where(machine)}: cannot stage {item.what or item.dest} to {dest}: "
                           f"{said_text.strip()[-300:]} (fix: free space in the machine's workdir or check its "
                           "permissions)")

    # -- start
    def remote_trial_dir(self, conn: _Connection, machine: Machine, job: JobSpec) -> str:
        return f"{remote_workdir(machine.workdir, conn.remote_home())}/{job.study}/trial-{job.trial:04d}"

    def start(self, job: JobSpec, machine: Machine, slot: Slot, workdir: Path,
              events: "queue.Queue[Event]") -> SshJob:
        conn = self.connection(machine)
        remote_dir = self.remote_trial_dir(conn, machine, job)
        job = warm.prepare(self, job, machine, remote_dir)  # caches and data (orchestrator/warm): staged over SSH
        events = warm.watch(events, job)
        env = job_env(machine, job, slot)
        image_id = None
        cleanup = None
        if machine.container.runtime != "none":
            cc = container_command(machine.container, job, slot, remote_dir, data_path=machine.data_path,
                                   extra_env=containerized_env(machine, env, slot), podman=self.podman)
            status, out = conn.run(" ".join(shlex.quote(a) for a in cc.inspect), timeout_s=60)
            image_id = parse_image_id(out) if status == 0 else None
            if image_id is None:
                raise SshError(f"{_where(machine)}: image {cc.image!r} is not there: {out.strip()[-300:]} (fix: pull, "
                               "load or build the image on the machine)")
            command, exports, cleanup = cc.argv, dict(job.secret_env), cc.cleanup
            if machine.container.runtime == "podman":
                exports["TMPDIR"] = self.podman.tmpdir
        else:
            command, exports = list(job.argv), {**env, **job.secret_env}
        try:
            script = job_script(command, exports, remote_dir, kill_grace_s=self.kill_grace_s, cleanup=cleanup)
        except ScriptError as exc:
            raise SshError(f"{_where(machine)}: trial {job.trial}: {exc}") from None
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "train.log"
        try:
            channel = conn.transport.open_session(timeout=self.connect_timeout_s)
            channel.set_combine_stderr(True)
            channel.exec_command(bootstrap_command(script))
            channel.sendall(script.encode("utf-8"))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            conn.lost(f"cannot start a job: {exc or type(exc).__name__}")
            raise SshError(f"{_where(machine)}: cannot start trial {job.trial}: {exc or type(exc).__name__}") from None
        log_file = open(log_path, "ab")
        handle = SshJob(job.trial, channel, conn, workdir, log_path, remote_dir, list(command), image_id,
                        self.kill_grace_s)
        threading.Thread(target=_pump, args=(handle, log_file, events), daemon=True,
                         name=f"ssh-log-{machine.name}-{job.trial}").start()
        return handle


__all__ = ["SshLauncher", "SshMachine", "SshAccess", "SshJob", "SshError", "HostKeyError", "UnknownHostKey", "ChangedHostKey", "TrustResult",
           "connect", "fetch_host_key", "fingerprint", "host_entry", "trust_host"]
