"""GPU facts from nvidia-smi: one query whose CSV output every launcher (local, ssh, ray) parses the same way."""

from __future__ import annotations

import shutil
import subprocess

QUERY = "index,name,utilization.gpu,memory.used,memory.total,temperature.gpu,driver_version"
NVIDIA_SMI_ARGV = ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"]


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


def local_gpus(timeout_s: float = 10.0) -> list[dict]:
    """The GPUs of this machine; [] when there is no nvidia-smi or it fails (no GPU: CPU slots)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(NVIDIA_SMI_ARGV, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else []
