"""orch's per-machine fork server: one process per machine (and key) that has imported the trainer's heavy libraries
once (torch and its compiler: about 8 s of every trial's start on a GPU machine, docs/fleet.md) and starts each
trial's trainer by fork. Standard library only: it is staged to the machine as WORKDIR/.orch-warm/bin/forkserver-
HASH.py beside the entry program, which loads it to ask for a fork (`run`) and runs it as a program to start a
server (`serve`). A study turns it on with `trainer.fork_server`.

    entry program (the job's process; the launcher tracks it)      fork server
      connect to the server's socket; none there: spawn one ---->  claim the socket, import the preload list
      send argv, cwd, env, umask, CPU affinity; fds 0, 1, 2  ---->  fork; the child takes the job's fds, cwd, env,
                                                                    umask and affinity, a session of its own
      <---- {"pid": N}; print the `@@warm` line; send "go"  ---->  the child runs the module or script as __main__
      forward SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2 to the child's process group
      <---- {"exit": code} or {"signal": n}: the entry ends the same way        (the server waits for the child)

The job's contract holds: the trainer's stdout and stderr are the job's; a signal to the job's process group reaches
the trainer's group through the entry; an entry killed outright (SIGKILL after the launcher's grace) is seen by the
child through a pidfd, and the child kills its own group; the entry exits with the trainer's status.

A single-node `torchrun` command (`--standalone`, `--nproc-per-node N`, `--nnodes 1`, `--master-addr/port`, `-m`) is
forked too: the child does what torchrun's agent would on one node. It forks N workers with torchrun's variables
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_*; OMP_NUM_THREADS=1 unless set) into its
process group and waits for them; a worker that fails stops the others and makes the status 1.

Anything the fork path cannot do starts the trainer as before (the entry execs it), and the `@@warm` report says
why: a command other than `python [-u] -m MODULE ...`, `python [-u] SCRIPT ...` or such a torchrun, run by the entry's
own interpreter; a server whose preload failed (its error); no pidfd on this kernel.

The socket is in Linux's abstract namespace (no file, no path-length limit), named from the user id and a digest of
the interpreter, the .orch-warm root, the cache key, the preload list and the environment variables a library may
read when it is imported (PYTHON*, TORCH*, TRITON*, OMP_*, ...; not CUDA_VISIBLE_DEVICES, which torch reads when it
first touches the GPU): a job that differs in any of them gets a server of its own. The server answers only
processes of its own user (SO_PEERCRED). It never touches CUDA (a preload that initializes it is refused), and it
exits after `idle_s` seconds without a running child. Its log: ROOT/forkserver/NAME.log. After the imports it also
computes the hashes torch's compiler would compute at each trainer's first compile (COMPILE_KEYS: Triton's sources
and library, 0.38 s a process on the 2-core CI machine; torch's sources 0.11 s), so that forked trainers start with
them.
"""

import gc
import hashlib
import importlib
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

#: environment variables a preloaded library may read at import: part of the server's name. Besides the prefixes, the
#: names torch's compiler configs read at import without one (torch/_inductor/config.py takes `cpp.cxx` from CXX: on
#: a machine that sets CXX, a server without it forked trainers whose FX graph keys missed every fresh trainer's
#: entries, measured on an H100 by bench/fork_cache_key_probe.py on 2026-12-07; tests/orch/test_fork_server.py checks
#: the installed torch for names these miss)
IMPORT_ENV = re.compile(r"^(PYTHON|LD_|TORCH|PYTORCH|TRITON|INDUCTOR|OMP_|MKL_|KMP_|OPENBLAS|NCCL_|CUDA_|CUBLAS|CUDNN|"
                        r"NVIDIA_|XLA_|TF_|HF_|TOKENIZERS|AOT_?INDUCTOR|CUTLASS_|CUTEDSL_|PT2_|PARTITIONER_|ENABLE_|"
                        r"(CC|CXX|CI|LOG_TLPARSE|CONDA_EXE|FAKE_ALLOW_META|LOG_AUTOTUNE_RESULTS|"
                        r"UNSAFE_SKIP_FSDP_MODULE_GUARDS|WINDOWS_CUDA_HOME|DUMP_AOTI_MINIFIER|AOT_PARTITIONER_DEBUG)$)")
PER_JOB_ENV = ("CUDA_VISIBLE_DEVICES",)
#: never in a server's environment or name, whatever the prefix: what looks like a credential (HF_TOKEN), besides the
#: names the study declares secret (the plan's `secret_vars`)
SECRET_LIKE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|PRIVATE_KEY)", re.IGNORECASE)
#: the server's own: torch asks NVML, not the CUDA driver, whether there is a GPU (a driver initialized before the fork
#: is unusable in the child), and starts no compile-worker pool at import (a server never compiles)
SERVER_ONLY_ENV = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1", "TORCH_WARM_POOL": "0"}
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "SHELL")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
MAX_MESSAGE = 16 << 20
STOP_GRACE_S = 30  # a failed rank's others get SIGTERM, then SIGKILL this much later (torchrun's default)
_PYTHON = re.compile(r"^python[0-9.]*$")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


# ---- the messages: a 4-byte length, then JSON ----------------------------------------------------------------------
def _send(sock, obj, fds=()):
    data = json.dumps(obj).encode()
    frame = struct.pack("!I", len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
        frame = frame[sent:]
    if frame:
        sock.sendall(frame)


def _recv_exact(sock, size, head=b""):
    data = head
    while len(data) < size:
        chunk = sock.recv(min(1 << 20, size - len(data)))
        if not chunk:
            raise EOFError("the other side closed the connection")
        data += chunk
    return data


def _recv(sock, fds=0):
    """(message, received fds); EOFError when the connection closed first."""
    got = []
    if fds:
        head, got, _flags, _addr = socket.recv_fds(sock, 4, fds)
        if not head:
            raise EOFError("the other side closed the connection")
    else:
        head = b""
    head = _recv_exact(sock, 4, head)
    (size,) = struct.unpack("!I", head)
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes")
    return json.loads(_recv_exact(sock, size).decode()), got


# ---- which commands can be forked, and by which server -------------------------------------------------------------
def forkable(command):
    """What the server is to run for `command`: {"kind": "module"|"path", "name", "args", "unbuffered"} of `python
    [-u] -m MODULE ARGS` or `python [-u] SCRIPT ARGS`, with "nproc" (and the rendezvous) added for a single-node
    `torchrun [OPTIONS] SCRIPT|-m MODULE ARGS` (or `python -m torch.distributed.run ...`); a string saying why not
    otherwise."""
    if not command:
        return "the command is empty"
    name = os.path.basename(command[0])
    if name == "torchrun":
        if _interpreter_of(command[0]) != os.path.realpath(sys.executable):
            return f"{command[0]} does not run in the interpreter the entry program runs in ({sys.executable})"
        return _torchrun(command[1:])
    if not _PYTHON.match(name):
        return f"{name} is neither a python interpreter nor torchrun"
    found = shutil.which(command[0])
    if not found or os.path.realpath(found) != os.path.realpath(sys.executable):
        return f"{command[0]} is not the interpreter the entry program runs in ({sys.executable})"
    rest, unbuffered = list(command[1:]), False
    while rest and rest[0] == "-u":
        rest, unbuffered = rest[1:], True
    if len(rest) >= 2 and rest[0] == "-m" and rest[1] == "torch.distributed.run":
        return _torchrun(rest[2:])
    if len(rest) >= 2 and rest[0] == "-m":
        return {"kind": "module", "name": rest[1], "args": rest[2:], "unbuffered": unbuffered}
    if rest and not rest[0].startswith("-"):
        return {"kind": "path", "name": rest[0], "args": rest[1:], "unbuffered": unbuffered}
    return f"python options {rest[:1]} other than -u, -m MODULE or a script"


def _interpreter_of(program):
    """The interpreter a console script (its `#!` line) runs in, or None."""
    found = shutil.which(program)
    try:
        with open(found or "", "rb") as f:
            line = f.readline(4096)
    except OSError:
        return None
    if not line.startswith(b"#!"):
        return None
    words = line[2:].decode(errors="replace").split()
    if words and os.path.basename(words[0]) == "env" and len(words) > 1:
        words = [shutil.which(words[1]) or words[1]]
    return os.path.realpath(words[0]) if words else None


#: torchrun's options a single-node fork does as torchrun would; any other starts the command as before
_TORCHRUN_FLAGS = {"--standalone": "standalone", "-m": "module", "--module": "module"}
_TORCHRUN_VALUES = {"--nproc-per-node": "nproc", "--nproc_per_node": "nproc", "--nnodes": "nnodes",
                    "--master-port": "master_port", "--master_port": "master_port", "--master-addr": "master_addr",
                    "--master_addr": "master_addr", "--max-restarts": "max_restarts", "--max_restarts": "max_restarts"}


def _torchrun(args):
    opts, rest = {}, list(args)
    while rest and rest[0].startswith("-"):
        word = rest.pop(0)
        option, _, value = word.partition("=")
        if option in _TORCHRUN_FLAGS and not value:
            opts[_TORCHRUN_FLAGS[option]] = True
        elif option in _TORCHRUN_VALUES:
            if not value:
                if not rest:
                    return f"torchrun option {option} has no value"
                value = rest.pop(0)
            opts[_TORCHRUN_VALUES[option]] = value
        else:
            return f"torchrun option {option} is not one the fork server does (a single-node run)"
    if not rest:
        return "torchrun names no script"
    if not str(opts.get("nproc", "1")).isdigit() or int(opts.get("nproc", "1")) < 1:
        return f"torchrun --nproc-per-node {opts['nproc']}: the fork server needs a number"
    if opts.get("nnodes", "1") not in ("1", "1:1"):
        return f"torchrun --nnodes {opts['nnodes']}: the fork server runs one node"
    if opts.get("max_restarts", "0") != "0":
        return "torchrun --max-restarts: the fork server does not restart workers"
    if opts.get("master_port") is not None and not str(opts["master_port"]).isdigit():
        return f"torchrun --master-port {opts['master_port']}: not a port number"
    return {"kind": "module" if opts.get("module") else "path", "name": rest[0], "args": rest[1:],
            "unbuffered": True, "nproc": int(opts.get("nproc", "1")), "standalone": bool(opts.get("standalone")),
            "master_addr": opts.get("master_addr", "127.0.0.1"), "master_port": opts.get("master_port")}


def import_env(env, secret_vars=()):
    """The variables of `env` a preloaded library may read at import: the server's name and environment hold these."""
    return {k: v for k, v in env.items() if IMPORT_ENV.match(k) and k not in PER_JOB_ENV and k not in secret_vars
            and not SECRET_LIKE.search(k)}


def server_name(root, key, preload, imports):
    """The socket's name: one server per user, interpreter, root, cache key, preload list and `imports` (import_env)."""
    ident = json.dumps({"python": os.path.realpath(sys.executable), "root": os.path.abspath(root), "key": key,
                        "preload": list(preload), "env": sorted(imports.items())}, sort_keys=True)
    return f"orch-fork-{os.getuid()}-{hashlib.sha256(ident.encode()).hexdigest()[:20]}"


def _connect(name):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect("\0" + name)
    except OSError:
        sock.close()
        return None
    return sock


def server_environment(env, imports):
    """A server's environment: the variables a preload may read (`imports`, from import_env) over the basics of `env`,
    and no job's own (its trial's parameters, its secrets): each trainer gets its job's whole environment through the
    request."""
    return {**{k: v for k, v in env.items() if k in BASE_ENV}, **imports, **SERVER_ONLY_ENV}


def _spawn(program, name, fork, root, env, imports):
    """Start a server (a session of its own: it outlives this job) and wait until it holds the socket. True when a
    server holds it now (this one or another job's, which won the race)."""
    log_dir = os.path.join(root, "forkserver")
    os.makedirs(log_dir, exist_ok=True)
    read, write = os.pipe()
    server_env = server_environment(env, imports)
    try:
        with open(os.path.join(log_dir, name + ".log"), "ab") as log:
            subprocess.Popen([sys.executable, program, "serve", name, json.dumps(list(fork["preload"])),
                              str(float(fork.get("idle_s", 900))), str(write)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=server_env, cwd=root,
                             pass_fds=(write,), start_new_session=True, close_fds=True)
    finally:
        os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read(64)  # "bound" or "taken" once the socket is claimed; nothing if the server died first
    return said.startswith((b"bound", b"taken"))


# ---- the entry's side: ask for a fork, then stand for the trainer ------------------------------------------------------
def run(fork, root, command, env, report, emit):
    """Start `command` through the machine's fork server. Returns None when it cannot (report["fork"] says why; the
    caller then execs the command); otherwise waits for the trainer and returns its exit status (a trainer killed by
    a signal: this process ends by the same signal)."""
    began = time.monotonic()
    target = forkable(command)
    if isinstance(target, str):
        report["fork"] = {"state": "fresh", "why": target}
        return None
    if not hasattr(os, "pidfd_open"):
        report["fork"] = {"state": "fresh", "why": "no pidfd on this system (Linux 5.3 and Python 3.9 needed)"}
        return None
    if target.get("nproc", 1) > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = "1"  # as torchrun sets it (part of the server's name: torch reads it at import)
    imports = import_env(env, fork.get("secret_vars", ()))
    name = server_name(root, report.get("key"), fork["preload"], imports)
    sock, spawned = _connect(name), False
    if sock is None:
        spawned = _spawn(fork["program"], name, fork, root, env, imports)
        sock = _connect(name) if spawned else None
    if sock is None:
        report["fork"] = {"state": "fresh", "why": "the fork server did not start (see "
                          f"{os.path.join(root, 'forkserver', name + '.log')})"}
        return None
    request = {"target": target, "cwd": os.getcwd(), "env": env, "umask": _umask(),
               "affinity": sorted(os.sched_getaffinity(0)), "entry": os.getpid()}
    try:
        _send(sock, request, fds=(0, 1, 2))
        reply, _ = _recv(sock)
    except (OSError, EOFError, ValueError) as exc:  # the server ended before it forked: nothing runs
        sock.close()
        report["fork"] = {"state": "fresh", "why": f"the fork server closed the request ({exc})"}
        return None
    if "pid" not in reply:
        sock.close()
        report["fork"] = {"state": "fresh", "why": f"the fork server refused: {reply.get('error', reply)}"}
        return None
    child = reply["pid"]
    report["fork"] = {"state": "forked", "server": name, "server_pid": reply.get("server_pid"),
                      "spawned": spawned, "preload_s": reply.get("preload_s"), "forks": reply.get("forks"),
                      "server_threads": reply.get("threads"),
                      "pid": child, "ms": round((time.monotonic() - began) * 1000, 1)}

    def forward(signum, _frame):
        try:
            os.killpg(child, signum)
        except OSError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    emit(report)
    try:
        sock.sendall(b"go")
        status, _ = _recv(sock)
    except (OSError, EOFError, ValueError):
        status = _outlived_server(child)
    finally:
        sock.close()
    if "signal" in status:
        signum = int(status["signal"])
        sys.stdout.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return int(status.get("exit", 1))


def _outlived_server(child):
    """The server ended while the trainer runs: wait for the trainer (its status is lost with the server)."""
    try:
        fd = os.pidfd_open(child)
    except OSError:
        fd = None
    if fd is not None:
        _wait_readable(fd)
        os.close(fd)
    print("orch-warm: the fork server ended while the trainer ran; its exit status is unknown", flush=True)
    return {"exit": 1}


def _wait_readable(fd):
    """Until `fd` (a pidfd: its process ended) is readable."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while not poller.poll():
        pass


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- the server ----------------------------------------------------------------------------------------------------
def _log(message):
    print(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] pid {os.getpid()}: {message}", file=sys.stderr, flush=True)


#: per-process hashes torch's compiler computes at its first compile of every process (a cache key's parts): the
#: module that holds each function, its name; computed by the server when the preload imported the module (file reads
#: only: Triton's sources and its library, torch's sources), so that each forked trainer finds them done
COMPILE_KEYS = (("triton.runtime.cache", "triton_key"), ("torch._inductor.codecache", "torch_key"),
                ("torch._inductor.codecache", "triton_key"))


def _warm_compile_keys():
    """Compute COMPILE_KEYS whose module is imported; the names of those computed (a failure is logged, not fatal)."""
    done = []
    for module, name in COMPILE_KEYS:
        func = getattr(sys.modules.get(module), name, None)
        if func is None:
            continue
        try:
            func()
            done.append(f"{module}.{name}")
        except Exception as exc:  # noqa: BLE001 - a library's internals: the trainer computes it itself then
            _log(f"{module}.{name}() failed ({type(exc).__name__}: {exc}); each trainer computes it")
    return done


def _preload(modules):
    """(error or None, seconds) of importing the preload list and computing the compile keys it allows; a module that
    made a CUDA context is an error: a forked child could not use the GPU."""
    began = time.monotonic()
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # an import may fail any way (SystemExit included): the server reports it
            return f"importing {module} failed: {type(exc).__name__}: {exc}", time.monotonic() - began
    keys_began = time.monotonic()
    keys = _warm_compile_keys()
    if keys:
        _log(f"compile keys {', '.join(keys)} in {time.monotonic() - keys_began:.2f} s")
    cuda = sys.modules.get("torch.cuda")
    if (cuda is not None and getattr(cuda, "is_initialized", lambda: False)()) or _cuda_driver_open():
        return "a preloaded module initialized CUDA (a forked trainer could not use the GPU)", time.monotonic() - began
    return None, time.monotonic() - began


def _cuda_driver_open():
    """Whether this process holds the CUDA driver's unified-memory device open (cuInit does; NVML does not)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/nvidia-uvm"):
                return True
        except OSError:
            pass
    return False


class _Forked(Exception):
    """Raised in the child, out of the server's loop: the request it is to run."""

    def __init__(self, request):
        Exception.__init__(self, "forked")
        self.request = request


def _threads():
    """This process's threads (a fork copies only the calling one: more than one is worth a look in the report)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _peer(conn):
    pid, uid, _gid = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid


def _fork(conn, request, fds, preload_s, forks):
    """Fork the trainer of one request. In the parent: (pid, pidfd); in the child: raises _Forked (the server's loop
    closes its sockets and pidfds in the child)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        request["fds"], request["conn"] = fds, conn
        raise _Forked(request)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    _send(conn, {"pid": pid, "server_pid": os.getpid(), "preload_s": round(preload_s, 2), "forks": forks,
                 "threads": _threads()})
    return pid, pidfd


def serve(name, preload, idle_s, ready_fd):
    """The server's loop. Returns in a forked child only (with its request); the server itself exits."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + name)
    except OSError:
        os.write(ready_fd, b"taken")  # another job's server won the race
        os.close(ready_fd)
        sys.exit(0)
    listener.listen(64)
    os.write(ready_fd, b"bound")
    os.close(ready_fd)
    _log(f"serving {name}; importing {', '.join(preload)}")
    gc.disable()  # no collection may leave freed holes in the pages the children share (Python's gc.freeze notes)
    error, preload_s = _preload(preload)
    gc.freeze()  # what the preload made is permanent: a child's collections never touch (and copy) its pages
    _log(f"preload: {error or 'ok'} in {preload_s:.2f} s ({_threads()} threads)")
    children, forks = {}, 0  # pidfd -> (pid, conn)
    poller = select.poll()  # poll, not select: no limit on fd numbers
    poller.register(listener.fileno(), select.POLLIN)
    try:
        while True:
            ready = poller.poll(None if children else idle_s * 1000)
            if not ready:
                _log(f"idle for {idle_s:g} s after {forks} forks: exiting")
                return None
            for fd, _event in ready:
                if fd == listener.fileno():
                    conn, _ = listener.accept()
                    conn.settimeout(30)
                    try:
                        peer_pid, uid = _peer(conn)
                        if uid != os.getuid():
                            _log(f"refused a connection of uid {uid}")
                            conn.close()
                            continue
                        request, fds = _recv(conn, fds=3)
                        if error or len(fds) != 3:
                            for extra in fds:
                                os.close(extra)
                            _send(conn, {"error": error or "the job's stdin, stdout and stderr did not arrive"})
                            conn.close()
                            continue
                        request["entry"] = peer_pid
                        pid, pidfd = _fork(conn, request, fds, preload_s, forks + 1)
                        forks += 1
                        children[pidfd] = (pid, conn)
                        poller.register(pidfd, select.POLLIN)
                        _log(f"forked {pid} for pid {peer_pid}: {request['target']['kind']} "
                             f"{request['target']['name']}")
                    except (OSError, EOFError, ValueError) as exc:
                        _log(f"a request failed: {type(exc).__name__}: {exc}")
                        conn.close()
                else:
                    pid, conn = children.pop(fd)
                    poller.unregister(fd)
                    os.close(fd)
                    _, status = os.waitpid(pid, 0)
                    reply = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                             else {"exit": os.waitstatus_to_exitcode(status)})
                    _log(f"{pid} ended: {reply}")
                    try:
                        _send(conn, reply)
                    except OSError:
                        pass
                    conn.close()
    except _Forked as forked:
        listener.close()
        for other_fd, (_, other_conn) in children.items():
            os.close(other_fd)
            other_conn.close()
        return forked.request


def _child_setup(request):
    """In the forked child: become the job (its fds, cwd, env, umask, affinity, a session of its own) and wait for
    the entry's go. Returns what starts the watch on the entry (should it die, the trainer's group is killed): a
    thread, started once no more forks follow (a fork copies only the calling thread)."""
    conn = request["conn"]
    os.setsid()
    for target_fd, fd in enumerate(request["fds"]):
        os.dup2(fd, target_fd)
        os.close(fd)
    os.umask(int(request["umask"]))
    try:
        os.sched_setaffinity(0, request["affinity"])
    except (OSError, ValueError):
        pass
    os.chdir(request["cwd"])
    gc.enable()
    os.environ.clear()
    os.environ.update(request["env"])
    try:
        entry = os.pidfd_open(int(request["entry"]))
    except OSError:
        os._exit(1)  # the entry is gone already
    conn.settimeout(None)
    try:
        if _recv_exact(conn, 2) != b"go":
            os._exit(1)
    except (OSError, EOFError):
        os._exit(1)  # the entry ended before the trainer started
    conn.close()
    _stdio(bool(request["target"].get("unbuffered") or request["env"].get("PYTHONUNBUFFERED")))

    def watch_entry():
        _wait_readable(entry)
        os.killpg(os.getpgid(0), signal.SIGKILL)

    return lambda: threading.Thread(target=watch_entry, daemon=True, name="orch-fork-entry").start()


def _free_port(addr):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((addr, 0))
        return sock.getsockname()[1]


def _ranks(target, watch):
    """torchrun on one node: this process forks `nproc` workers with torchrun's variables (RANK, LOCAL_RANK,
    WORLD_SIZE, MASTER_ADDR/PORT, ...) and returns in each with its rank set. This process, the workers' parent in
    their process group, stays to wait: a worker that fails stops the others (SIGTERM, SIGKILL after
    STOP_GRACE_S) and makes the exit status 1; a signal it gets goes on to every worker, and it then ends by it."""
    nproc = int(target["nproc"])
    addr = target.get("master_addr") or "127.0.0.1"
    port = target.get("master_port") or (_free_port(addr) if target.get("standalone") else 29500)
    run_id = os.urandom(8).hex() if target.get("standalone") else "none"
    os.environ.update({"MASTER_ADDR": addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
                       "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0", "GROUP_WORLD_SIZE": "1",
                       "ROLE_NAME": "default", "ROLE_WORLD_SIZE": str(nproc), "TORCHELASTIC_RESTART_COUNT": "0",
                       "TORCHELASTIC_MAX_RESTARTS": "0", "TORCHELASTIC_RUN_ID": run_id,
                       "TORCHELASTIC_USE_AGENT_STORE": "False"})
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    workers, received = {}, []

    def send(signum):
        for pid in list(workers):
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    def forward(signum, _frame):
        received.append(signum)
        send(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    sys.stdout.flush()
    sys.stderr.flush()
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:
            for signum in FORWARDED:
                signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
            os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "ROLE_RANK": str(rank)})
            return rank
        workers[pid] = rank
    watch()
    failed = None
    while workers:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        rank = workers.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 and failed is None and not received and rank is not None:
            failed = (rank, code)
            print(f"orch-fork: rank {rank} (pid {pid}) exited with {code}; stopping the other ranks", file=sys.stderr,
                  flush=True)
            signal.signal(signal.SIGALRM, lambda _signum, _frame: send(signal.SIGKILL))
            signal.alarm(STOP_GRACE_S)
            send(signal.SIGTERM)
    if received:
        signal.signal(received[0], signal.SIG_DFL)
        os.kill(os.getpid(), received[0])
    sys.exit(1 if failed else 0)


def _stdio(unbuffered):
    """sys.stdout and sys.stderr on the job's fds, buffered as a fresh interpreter with this environment would."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name)
        raw = io.FileIO(fd, "w", closefd=False)
        stream = (io.TextIOWrapper(raw, encoding=old.encoding, errors=old.errors, write_through=True) if unbuffered
                  else io.TextIOWrapper(io.BufferedWriter(raw), encoding=old.encoding, errors=old.errors,
                                        line_buffering=name == "stderr" or raw.isatty()))
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _run_target(target):
    import runpy

    sys.argv = [target["name"], *target["args"]]
    if target["kind"] == "module":
        sys.path[0] = os.getcwd()
        runpy.run_module(target["name"], run_name="__main__", alter_sys=True)
    else:
        sys.path[0] = os.path.dirname(os.path.realpath(target["name"]))
        runpy.run_path(target["name"], run_name="__main__")


def main(argv):
    if len(argv) != 5 or argv[0] != "serve":
        print("usage: forkserver.py serve NAME PRELOAD_JSON IDLE_S READY_FD", file=sys.stderr)
        return 2
    request = serve(argv[1], json.loads(argv[2]), float(argv[3]), int(argv[4]))
    if request is None:
        return 0
    watch = _child_setup(request)
    if "nproc" in request["target"]:
        _ranks(request["target"], watch)  # returns in each worker; the ranks' parent exits in it
    else:
        watch()
    _run_target(request["target"])  # as `python -m`/`python SCRIPT` would: exceptions and SystemExit end it alike
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
