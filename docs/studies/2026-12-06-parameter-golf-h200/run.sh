#!/usr/bin/env bash
# The study, resumable: run from the repository root on a one-GPU machine. Needs the fetched script in
# .devcarry/parameter-golf/train_gpt.py and the data in data/sp1024/ (bench/public/pg_data.py). $OUT gets the database.
#   bash docs/studies/2026-12-06-parameter-golf-h200/run.sh
set -euo pipefail
HERE=docs/studies/2026-12-06-parameter-golf-h200
OUT=${OUT:-/tmp/pg-h200-out}
NAME=pg-h200
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DB="$OUT/study.db"
if [ -f "$HERE/study.db" ] && [ ! -f "$DB" ]; then cp "$HERE"/study.db "$OUT"/; fi
orch() { python3 -m orchestrator --db "sqlite:///$DB" "$@"; }
orch study status "$NAME" --json >/dev/null 2>&1 || orch study create "$NAME" --from "$HERE/study.yaml"
orch study run "$NAME" --fleet "$HERE/fleet.yaml" --plain
orch study status "$NAME"
[ -n "${SKIP_EXPORT:-}" ] || orch export "$NAME" --format md --out "$OUT/$NAME.md"
