"""A stand-in for nvidia-smi on a machine without GPUs (the one part of these tests that cannot be real here): the
tests install it as an executable (with this interpreter in its #! line) and name it in the fleet's `nvidia_smi:`,
so every launcher runs it on the "machine" exactly as it runs the real one.

It answers the two queries the controller makes, `--query-gpu=FIELDS` and `--query-compute-apps=FIELDS` (CSV, no
header, no units), from `state.json` beside it, which the test rewrites while the run goes:

    {"gpus": [{"name": "NVIDIA H100 80GB HBM3"}, ...],
     "holders": [{"gpu": 1, "pid": 12345, "name": "python", "mib": 2048}]}

A holder is listed only while its pid is alive, as nvidia-smi lists only live processes: a test holds a "GPU" with
a real process and frees it by ending that process. Anything else exits 6 with nvidia-smi's "invalid" message.
"""

import json
import os
import sys
from pathlib import Path

GPU_FIELDS = {"index": lambda i, g: str(i), "uuid": lambda i, g: f"GPU-fake-{i:04d}", "name": lambda i, g: g["name"],
              "utilization.gpu": lambda i, g: "0", "memory.used": lambda i, g: "0",
              "memory.total": lambda i, g: "81559", "temperature.gpu": lambda i, g: "30",
              "driver_version": lambda i, g: "550.54.15", "pci.bus_id": lambda i, g: f"00000000:{i + 1:02X}:00.0"}
APP_FIELDS = {"gpu_uuid": lambda h: f"GPU-fake-{h['gpu']:04d}", "pid": lambda h: str(h["pid"]),
              "process_name": lambda h: h.get("name", "python"), "used_memory": lambda h: str(h.get("mib", 1024))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie holds no GPU
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def main(argv: list[str]) -> int:
    state = json.loads(Path(__file__).with_name("state.json").read_text())
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    if "--query-gpu" in options:
        fields = options["--query-gpu"].split(",")
        for i, gpu in enumerate(state.get("gpus", [])):
            print(", ".join(GPU_FIELDS[f](i, gpu) for f in fields))
        return 0
    if "--query-compute-apps" in options:
        fields = options["--query-compute-apps"].split(",")
        for holder in state.get("holders", []):
            if _alive(int(holder["pid"])):
                print(", ".join(APP_FIELDS[f](holder) for f in fields))
        return 0
    print(f"Invalid combination of input arguments: {' '.join(argv)}", file=sys.stderr)
    return 6


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
