"""GPU facts from nvidia-smi: the queries every launcher (local, ssh, ray) runs on a machine, and their parsers.

`machine.nvidia_smi` names the executable on the machine (default `nvidia-smi` on its PATH): the one seam through
which the controller reads GPUs, so a machine whose nvidia-smi lives elsewhere (or a test's stand-in) is read the
same way over every launcher.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass

QUERY = "index,name,utilization.gpu,memory.used,memory.total,temperature.gpu,driver_version"
NVIDIA_SMI = "nvidia-smi"
NVIDIA_SMI_ARGV = [NVIDIA_SMI, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"]
#: which process holds which GPU: the GPUs' uuids by index, then the compute processes by GPU uuid
UUID_QUERY = "index,uuid"
APPS_QUERY = "gpu_uuid,pid,process_name,used_memory"
APPS_MARK = "@@orch-compute-apps"


def gpu_query_argv(nvidia_smi: str = NVIDIA_SMI) -> list[str]:
    return [nvidia_smi, *NVIDIA_SMI_ARGV[1:]]


def compute_apps_argv(nvidia_smi: str = NVIDIA_SMI) -> list[str]:
    """One command (through `sh -c`: one round trip on a remote machine) printing both queries, split by a mark."""
    smi = shlex.quote(nvidia_smi)
    return ["sh", "-c", f"{smi} --query-gpu={UUID_QUERY} --format=csv,noheader,nounits && echo {APPS_MARK} && "
            f"{smi} --query-compute-apps={APPS_QUERY} --format=csv,noheader,nounits"]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def parse_nvidia_smi(output: str) -> list[dict]:
    gpus = []
    for line in output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 7 or not parts[0].isdigit():
            continue
        gpus.append({
            "index": int(parts[0]), "name": parts[1], "utilization_pct": _number(parts[2]),
            "memory_used_mib": _number(parts[3]), "memory_total_mib": _number(parts[4]),
            "temperature_c": _number(parts[5]), "driver_version": parts[6],
        })
    return gpus


@dataclass(frozen=True)
class GpuProcess:
    """A compute process nvidia-smi sees on one GPU of a machine."""

    gpu: int  # the GPU's index on the machine (nvidia-smi's numbering, as CUDA_VISIBLE_DEVICES uses it)
    pid: int
    name: str
    used_mib: float | None

    def describe(self) -> str:
        memory = f", {self.used_mib:.0f} MiB" if self.used_mib is not None else ""
        return f"pid {self.pid} ({self.name or '?'}{memory}) on gpu{self.gpu}"


def parse_compute_apps(output: str) -> list[GpuProcess] | None:
    """The processes of `compute_apps_argv`'s output; None when the output is not that (no nvidia-smi, an error)."""
    if APPS_MARK not in output:
        return None
    uuids_text, apps_text = output.split(APPS_MARK, 1)
    index_of = {}
    for line in uuids_text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            index_of[parts[1]] = int(parts[0])
    processes = []
    for line in apps_text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[1].isdigit() or parts[0] not in index_of:
            continue
        name = ",".join(parts[2:-1])  # a process name may itself hold commas
        processes.append(GpuProcess(gpu=index_of[parts[0]], pid=int(parts[1]), name=name, used_mib=_number(parts[-1])))
    return processes


def local_gpus(timeout_s: float = 10.0, nvidia_smi: str = NVIDIA_SMI) -> list[dict]:
    """The GPUs of this machine; [] when there is no nvidia-smi or it fails (no GPU: CPU slots)."""
    if shutil.which(nvidia_smi) is None:
        return []
    try:
        result = subprocess.run(gpu_query_argv(nvidia_smi), capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else []
