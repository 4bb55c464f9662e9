"""The bash wrapper that runs one job on a remote machine (used by the ssh launcher).

The SSH channel's command is a fixed bootstrap, `bash -c 'S=$(head -c N); eval "$S"'`: it reads the
N-byte script below from the channel's stdin. The script (and the secrets it exports) therefore never
appears in any argv on either machine. What the script does:

- creates the trial directory and `cd`s into it;
- exports the job's environment (`export NAME=VALUE`, names validated, values `shlex.quote`d);
- starts the job in its own session and process group (`setsid -- ARGV...`, every argument quoted),
  stdout+stderr merged, through `tee -a job.log` (the log kept on the machine) to the channel;
- a watcher waits for EOF on stdin: the controller closing the channel (cancel), or the connection
  dying, makes it kill the job's process group: TERM, then KILL after the grace period, then the
  container cleanup command (a container whose client was killed is removed);
- exits with the job's exit status (128+N when a signal N ended it).
"""

from __future__ import annotations

import re
import shlex

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REMOTE_LOG = "job.log"
CANCEL_MARK = ".orch-cancelled"
PID_FILE = ".orch-job.pid"


class ScriptError(ValueError):
    pass


def remote_workdir(workdir: str, home: str) -> str:
    """A machine's `workdir` as an absolute path on it: `~`, `~/...` and relative paths are under its $HOME."""
    if workdir == "~" or workdir.startswith("~/"):
        workdir = home + workdir[1:]
    elif not workdir.startswith("/"):
        workdir = home.rstrip("/") + "/" + workdir
    return workdir.rstrip("/")


def quote_path(path: str) -> str:
    """Quote a remote path; a leading `~/` stays the remote $HOME."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _check(argv: list[str], env: dict[str, str]) -> None:
    if not argv:
        raise ScriptError("the job has an empty command")
    for part in argv:
        if not isinstance(part, str) or "\x00" in part:
            raise ScriptError(f"argument {part!r} is not a string without NUL bytes")
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise ScriptError(f"environment variable name {name!r} is invalid (fix: letters, digits, underscores)")
        if not isinstance(value, str) or "\x00" in value:
            raise ScriptError(f"environment variable {name} has a value that is not a string without NUL bytes")


def job_script(argv: list[str], env: dict[str, str], directory: str, *, kill_grace_s: float = 5.0,
               cleanup: list[str] | None = None) -> str:
    """The wrapper script for `argv` with `env`, run in `directory` (created if missing)."""
    _check(argv, env)
    ticks = max(1, int(round(kill_grace_s * 10)))
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
    command = " ".join(shlex.quote(part) for part in argv)
    cleanup_line = (" ".join(shlex.quote(p) for p in cleanup) + " >/dev/null 2>&1") if cleanup else ":"
    return f"""set -u
D={quote_path(directory)}
mkdir -p -- "$D" && cd -- "$D" || {{ echo "orch: cannot create the trial directory $D on $(hostname)"; exit 97; }}
rm -f -- {CANCEL_MARK}
{exports}setsid -- {command} </dev/null > >(exec tee -a -p {REMOTE_LOG}) 2>&1 &
J=$!
echo "$J" > {PID_FILE}
exec 3<&0 2>/dev/null
reap() {{
  # no group yet (setsid has not run: the job is just starting): the process itself, which then never starts it
  kill -"$1" -- -"$J" 2>/dev/null || {{ kill -"$1" "$J" 2>/dev/null; return 0; }}
  i=0
  while kill -0 -- -"$J" 2>/dev/null && [ "$i" -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL -- -"$J" 2>/dev/null
  return 0
}}
(
  trap '' HUP PIPE
  while IFS= read -r _l <&3 || [ -n "$_l" ]; do :; done
  : > {CANCEL_MARK}
  reap TERM
  {cleanup_line}
) </dev/null >/dev/null 2>&1 &
W=$!
exec 3<&-
trap '' HUP PIPE
wait "$J"
rc=$?
if [ -e {CANCEL_MARK} ]; then
  wait "$W"
else
  kill "$W" 2>/dev/null
  reap TERM
fi
exit "$rc"
"""


def trial_directory(workdir: str, study: str, trial: int) -> str:
    """A trial's directory on the machine, `~/`-relative when the machine's workdir is relative (see quote_path)."""
    return f"{remote_workdir(workdir, '~')}/{study}/trial-{trial:04d}"


def alive_check(directory: str) -> list[str]:
    """argv that exits 0 while the job the wrapper started in `directory` still runs: its process group (the pid
    in PID_FILE leads it) has a process left. After its controller died, the job may outlive it for the watcher's
    grace period."""
    pid_file = f"{quote_path(directory)}/{PID_FILE}"
    return ["bash", "-c", f'P=$(cat -- {pid_file} 2>/dev/null) && [ -n "$P" ] && kill -0 -- -"$P" 2>/dev/null']


def bootstrap_command(script: str) -> str:
    """The channel's command: read exactly len(script) bytes from stdin, then run them. `head -c` reads no
    further, so the rest of stdin (its EOF) is left for the script's watcher."""
    size = len(script.encode("utf-8"))
    return f"exec bash -c 'export LC_ALL=C; S=$(head -c {size}) && eval \"$S\"'"
