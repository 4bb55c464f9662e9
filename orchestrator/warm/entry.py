"""orch's warm-machine entry: runs on the machine, in the job's own environment (its interpreter, its container),
right before the trainer, which it then becomes (exec). Standard library only: it is copied to the machine as a file
(WORKDIR/.orch-warm/bin/entry-HASH.py) and must not import the orchestrator.

    python entry-HASH.py PLAN.json -- TRAINER ARGV...

1. The cache key: the digest of the plan's code digest (the training files' checksums) and of the library versions
   this interpreter has installed (python, torch, triton; read from the dist-info folders, nothing imported).
   TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, CUDA_CACHE_PATH, TORCH_EXTENSIONS_DIR and ORCH_CACHE_DIR (a folder
   for the trainer's own caches) point into ROOT/cache/KEY/; a variable the job already has is left as it is.
   The most recently used `keep` keys are kept, older ones removed.
2. The data: every file of the plan must be staged (ROOT/data/SHA256, put there by the launcher) with its size;
   its sha256 is computed in full when its size or mtime differs from the last full check (ROOT/data/SHA256.ok),
   and a file whose digest differs is refused. Each file is linked into the trial directory under the plan's link
   folder (ORCH_DATA_DIR names that folder).
3. One line `@@warm {...}` (JSON: key, found, entries, bytes, other keys, data states, versions, ms, and with a
   fork server how the trainer started) on stdout, then exec of the trainer; or, when the plan has a `fork` server
   (forkserver.py, staged beside this file), the trainer forked from it while this process stands for it. A
   refusal prints `orch-warm: error: ...` and `@@warm {"ok": false, ...}` and exits with status 86 (REFUSED): the
   launcher reports it as the trial's launch error.
"""

import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time

REFUSED = 86
CACHE_VARS = (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton"), ("CUDA_CACHE_PATH", "cuda"),
              ("TORCH_EXTENSIONS_DIR", "extensions"), ("ORCH_CACHE_DIR", "trainer"))
LIBRARIES = ("torch", "triton", "pytorch_triton")
_DIST = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+?)\.(?:dist-info|egg-info)$")
MAX_WALK = 200000


class Refused(Exception):
    def __init__(self, problem, fix):
        Exception.__init__(self, problem)
        self.problem, self.fix = problem, fix


def library_versions():
    """python and the compile-relevant libraries this interpreter would import (first match on sys.path)."""
    out = {"python": platform.python_version(), "arch": platform.machine()}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            match = _DIST.match(name)
            if match:
                lib = match.group("name").lower().replace("-", "_").replace(".", "_")
                if lib in LIBRARIES and lib not in out:
                    out[lib] = match.group("version")
    return out


def _walk(path):
    entries = size = 0
    for base, _dirs, files in os.walk(path):
        for name in files:
            entries += 1
            try:
                size += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                pass
            if entries >= MAX_WALK:
                return entries, size
    return entries, size


def _prune(cache_root, key, keep):
    """Remove all but the `keep` most recently used keys; (count, bytes) of the other keys kept."""
    try:
        keys = [k for k in os.listdir(cache_root) if k != key and os.path.isdir(os.path.join(cache_root, k))]
    except OSError:
        return 0, 0
    keys.sort(key=lambda k: os.stat(os.path.join(cache_root, k)).st_mtime, reverse=True)
    kept = keys[:max(0, keep - 1)]
    for old in keys[len(kept):]:
        shutil.rmtree(os.path.join(cache_root, old), ignore_errors=True)
    size = sum(_walk(os.path.join(cache_root, k))[1] for k in kept)
    return len(kept), size


def caches(plan, env, report):
    root = plan["root"]
    versions = library_versions()
    key = hashlib.sha256(json.dumps({"code": plan["code"], "versions": versions}, sort_keys=True).encode()
                         ).hexdigest()[:16]
    cache = os.path.join(root, "cache", key)
    entries, size = _walk(cache) if os.path.isdir(cache) else (0, 0)
    os.makedirs(cache, exist_ok=True)
    kept = {}
    keep_vars = set(plan.get("keep_vars", ()))
    for var, sub in CACHE_VARS:
        if var in keep_vars and env.get(var):
            kept[var] = env[var]  # set by the study or the machine: theirs
            continue
        env[var] = os.path.join(cache, sub)
        os.makedirs(env[var], exist_ok=True)
    os.utime(cache)  # the most recently used key
    env["ORCH_CACHE_KEY"] = key
    others, other_bytes = _prune(os.path.join(root, "cache"), key, int(plan.get("keep", 8)))
    report.update(key=key, found=entries > 0, entries=entries, bytes=size, other_keys=others,
                  other_bytes=other_bytes, versions=versions, cache=cache, kept=kept)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(st):
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def check_file(root, item):
    """'checked' (size and mtime as at its last full check), 'verified' (hashed now) or Refused."""
    path = os.path.join(root, "data", item["sha256"])
    try:
        st = os.stat(path)
    except OSError:
        raise Refused(f"data file {item['name']} is not staged on this machine ({path} is missing)",
                      "run the trial again: the launcher stages missing files before the start")
    if st.st_size != item["size"]:
        raise Refused(f"staged data file {path} ({item['name']}) has {st.st_size} bytes, not {item['size']}",
                      f"remove it (rm {path}); the next trial stages it again")
    ok_path = path + ".ok"
    try:
        with open(ok_path) as f:
            if json.load(f) == _stamp(st):
                return "checked"
    except (OSError, ValueError):
        pass
    actual = _sha256(path)
    if actual != item["sha256"]:
        raise Refused(f"staged data file {path} ({item['name']}) has sha256 {actual}, not {item['sha256']}",
                      f"remove it (rm {path}); the next trial stages it again from the study's data")
    tmp = f"{ok_path}.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_stamp(st), f)
    os.replace(tmp, ok_path)
    return "verified"


def data(plan, env, report):
    root, states = plan["root"], []
    link_root = os.path.abspath(plan.get("link") or "data")
    total = 0
    for item in plan.get("data", []):
        state = check_file(root, item)
        link = os.path.join(link_root, item["name"])
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.join(root, "data", item["sha256"]), link)
        states.append({"name": item["name"], "sha256": item["sha256"][:12], "bytes": item["size"], "state": state})
        total += item["size"]
    if states:
        env["ORCH_DATA_DIR"] = link_root
    report.update(data=states, data_bytes=total)


def _emit(report):
    print("@@warm " + json.dumps(report, sort_keys=True), flush=True)


def _load_forkserver(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("orch_forkserver", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv):
    began = time.monotonic()
    if len(argv) < 3 or argv[1] != "--":
        print("orch-warm: usage: entry.py PLAN.json -- ARGV...", file=sys.stderr)
        return 2
    command = argv[2:]
    report = {"v": 1, "ok": True}
    env = dict(os.environ)
    try:
        with open(argv[0]) as f:
            plan = json.load(f)
        report["root"] = plan["root"]
        caches(plan, env, report)
        data(plan, env, report)
    except Refused as exc:
        report.update(ok=False, error=exc.problem, fix=exc.fix)
    except (OSError, ValueError, KeyError) as exc:
        report.update(ok=False, error=f"the warm-machine setup failed: {type(exc).__name__}: {exc}",
                      fix="check the machine's workdir (free space, permissions)")
    report["ms"] = round((time.monotonic() - began) * 1000, 1)
    if not report["ok"]:
        print(f"orch-warm: error: {report['error']} (fix: {report['fix']})", flush=True)
        _emit(report)
        return REFUSED
    if plan.get("fork"):  # the machine's fork server starts the trainer (forkserver.py); None: it cannot
        status = _load_forkserver(plan["fork"]["program"]).run(plan["fork"], plan["root"], command, env, report, _emit)
        if status is not None:
            return status
    _emit(report)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"orch-warm: cannot run {command[0]!r}: {exc}", flush=True)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
