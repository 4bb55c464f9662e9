#!/usr/bin/env bash
# The study, resumable: run from the repository root on a one-GPU machine. Needs the three files of the fetched
# modded-nanogpt checkout in .devcarry/modded-nanogpt/, the data in data/fineweb10B/ (make_data.py beside this
# file) and GPT-2's BPE files in $TIKTOKEN_CACHE_DIR (default .devcarry/tiktoken-cache). $OUT gets the database.
#   bash docs/studies/2026-12-06-modded-nanogpt-h200/run.sh
set -euo pipefail
HERE=docs/studies/2026-12-06-modded-nanogpt-h200
OUT=${OUT:-/tmp/mng-h200-out}
NAME=mng-h200
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/.devcarry/tiktoken-cache}
DB="$OUT/study.db"
if [ -f "$HERE/study.db" ] && [ ! -f "$DB" ]; then cp "$HERE"/study.db "$OUT"/; fi
orch() { python3 -m orchestrator --db "sqlite:///$DB" "$@"; }
orch study status "$NAME" --json >/dev/null 2>&1 || orch study create "$NAME" --from "$HERE/study.yaml"
orch study run "$NAME" --fleet "$HERE/fleet.yaml" --plain
orch study status "$NAME"
[ -n "${SKIP_EXPORT:-}" ] || orch export "$NAME" --format md --out "$OUT/$NAME.md"
