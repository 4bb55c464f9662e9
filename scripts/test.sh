#!/usr/bin/env bash
# The README's second command: install what is needed, then run the whole test suite (SQLite and a real
# PostgreSQL server that the tests start themselves; GPU tests are skipped without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
