"""Warm machines: per-machine compile caches kept across trials, and the study's data staged once per machine.

Everything lives under the machine's workdir, in `.orch-warm/` beside the studies' trial directories:

    WORKDIR/.orch-warm/cache/KEY/{inductor,triton,cuda,extensions,trainer}   compile caches of one key
    WORKDIR/.orch-warm/data/SHA256                                          a staged data file, named by its digest
    WORKDIR/.orch-warm/data/SHA256.ok                                       size/mtime of its last full check
    WORKDIR/.orch-warm/bin/entry-HASH.py, plans/HASH.json                   the entry program and a job's plan
    WORKDIR/.orch-warm/bin/forkserver-HASH.py, forkserver/NAME.log          the fork server (trainer.fork_server)

KEY is computed on the machine, in the job's own environment: the digest of the training files' checksums (those the
trial row stores) and of the library versions the job's interpreter reports (python, torch, triton), so a changed
script or an upgraded library never reuses a stale entry. The parts, data flowing one way:

- `plan.py`: from a study (its `trainer.data`, the code checksums) to a `WarmPlan` on the JobSpec; the create-time
  checks of the data files;
- `stage.py`: the files a job needs on its machine (`StageItem`s, content-addressed) and the local-filesystem copy;
- `launch.py`: what every launcher calls in `start()`: stage the items through `Launcher.stage`, wrap the argv with
  the entry program, mount `.orch-warm` into a container, and turn the entry's refusal into the trial's launch error;
- `entry.py`: the program that runs on the machine before the trainer (stdlib only): sets the cache variables,
  checks and links the data, prints one `@@warm {...}` line, then execs the trainer;
- `forkserver.py`: with `trainer.fork_server`, the per-machine process (stdlib only) that imported torch once and
  forks each trainer; the entry program asks it for a fork and stands for the trainer;
- `report.py`: reads those lines back (from the trials' logs) for `orch fleet status`.
"""

from .launch import REFUSED, prepare, warm_root, watch
from .plan import WarmPlan, data_problems, warm_plan

__all__ = ["REFUSED", "WarmPlan", "data_problems", "prepare", "warm_plan", "warm_root", "watch"]
