#!/usr/bin/env bash
# The README's second command: install what is needed, then run the whole test suite (SQLite and a real
# PostgreSQL server that the tests start themselves; GPU tests are skipped without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Two xdist workers (ORCH_TEST_WORKERS): the tests that start daemons or hold a wall-clock bound stay on one of
# them, one at a time (tests/conftest.py SERIAL); the rest spread over both.
exec .venv/bin/python -m pytest -q -n "${ORCH_TEST_WORKERS:-2}" --dist loadgroup "$@"
