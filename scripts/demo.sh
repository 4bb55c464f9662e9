#!/usr/bin/env bash
# The README's first command: install what is needed, then run the demo study (studies/demo.yaml) on the
# embedded default fleet (this machine, CPU slots) with a fresh SQLite database, and print the result table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export ORCH_DB="sqlite:///$PWD/runs/demo.db"
mkdir -p runs
rm -f runs/demo.db runs/demo.db-wal runs/demo.db-shm
rm -rf runs/demo
.venv/bin/orch study create demo --from studies/demo.yaml
.venv/bin/orch study run demo --plain
echo
echo "database: $ORCH_DB   (try: .venv/bin/orch study status demo; .venv/bin/orch export demo --format csv)"
