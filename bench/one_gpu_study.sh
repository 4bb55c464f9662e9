#!/usr/bin/env bash
# A shipped study folder (study.yaml, fleet.yaml) run to its end, resumable: run from the repository root.
#   OUT=DIR bash bench/one_gpu_study.sh docs/studies/2026-12-06-parameter-golf-h200 pg-h200
# The database is $OUT/study.db (a copy of the folder's study.db, when there is one, to continue from); SKIP_EXPORT=1
# leaves the write-up to a later `orch export` on the machine the database comes back to; STUDY_FILE=PATH creates the
# study from another file than the folder's study.yaml (a variant beside it, so that its relative paths hold).
set -euo pipefail
HERE=$1 NAME=$2
OUT=${OUT:-/tmp/$NAME-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DB="$OUT/study.db"
if [ -f "$HERE/study.db" ] && [ ! -f "$DB" ]; then cp "$HERE"/study.db "$OUT"/; fi
orch() { python3 -m orchestrator --db "sqlite:///$DB" "$@"; }
orch study status "$NAME" --json >/dev/null 2>&1 || orch study create "$NAME" --from "${STUDY_FILE:-$HERE/study.yaml}"
orch study run "$NAME" --fleet "$HERE/fleet.yaml" --plain
orch study status "$NAME"
[ -n "${SKIP_EXPORT:-}" ] || orch export "$NAME" --format md --out "$OUT/$NAME.md"
