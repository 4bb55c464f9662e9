"""Runs a job and first says where it runs: `node-report {...}` with the machine's NODE_NAME (fleet env), the pid of
the Ray raylet it runs under (Ray sets RAY_RAYLET_PID in its workers; the job inherits it) and its working
directory. Then it execs the rest of its argv (the stand-in trainer): `node_report.py TRAINER.py ARGS...`."""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__":
    print("node-report " + json.dumps({"node_name": os.environ.get("NODE_NAME"), "raylet_pid":
                                       os.environ.get("RAY_RAYLET_PID"), "cwd": os.getcwd()}), flush=True)
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
