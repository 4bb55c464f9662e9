#!/usr/bin/env bash
# Create ./.venv (if missing) with everything orch, the trainer and the tests need, on a CPU machine.
#
# torch is pinned to 2.13.0. A CPU-only build is preferred: when PyTorch's CPU wheel index
# (ORCH_TORCH_CPU_INDEX, default below; set it empty to skip) answers within 5 s, it is added as an extra
# index and pip takes its 2.13.0+cpu wheel (no CUDA packages, no triton requirement). Otherwise torch
# comes from the package index you already use: on PyPI that is the CUDA build (about 5 GB of nvidia-*
# wheels, and triton 3.7.1 that torch pins); it runs on CPU all the same. A pip configured with a local
# CPU wheel (find-links) takes that one either way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC="torch==2.13.0"
CPU_INDEX=${ORCH_TORCH_CPU_INDEX-https://download.pytorch.org/whl/cpu}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip)

cpu_index_answers() {  # bounded: DNS failure is immediate, a silent firewall costs at most 5 s
  [ -n "$CPU_INDEX" ] || return 1
  .venv/bin/python - "$CPU_INDEX" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).close()
EOF
}

install_torch() {
  if .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('torch').split('+')[0] != sys.argv[1])" \
      "${TORCH_SPEC#torch==}" 2>/dev/null; then
    return 0  # already there (a re-run after a pyproject.toml change)
  fi
  if cpu_index_answers; then
    echo "bootstrap: torch from the CPU wheel index $CPU_INDEX"
    if "${pip[@]}" install -q --extra-index-url "$CPU_INDEX" "$TORCH_SPEC"; then
      return 0
    fi
    echo "bootstrap: the CPU index failed; torch from the package index instead"
  else
    echo "bootstrap: no CPU wheel index reachable; torch from the package index (on PyPI: the CUDA build, ~5 GB)"
  fi
  "${pip[@]}" install -q "$TORCH_SPEC"
}

stamp=.venv/.orch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "${pip[@]}" install -q --upgrade pip
  install_torch
  "${pip[@]}" install -q -e ".[trainer,dev]"
  touch "$stamp"
fi
