#!/usr/bin/env bash
# The whole study, resumable: run from the repository root on the 4-GPU machine (the device tool copies
# the tree there; $OUT comes back). Every step is skipped once done, so a second call continues where a
# first one stopped (copy the returned study.db* beside this file first).
#   bash docs/studies/2026-11-21-stage-shift/run.sh
# Overrides for a dry run elsewhere: STUDY_FILE, FLEET_FILE, BASELINE, MAX_STEPS; SKIP_EXPORT=1 leaves the
# write-up to a later `orch export` (e.g. on the machine the database comes back to).
set -euo pipefail
HERE=docs/studies/2026-11-21-stage-shift
OUT=${OUT:-/tmp/stage-shift-out}
STUDY_FILE=${STUDY_FILE:-$HERE/study.yaml}
FLEET_FILE=${FLEET_FILE:-$HERE/fleet.yaml}
BASELINE=${BASELINE:-stage1=0.3333,stage3=0.3333}
MAX_STEPS=${MAX_STEPS:-230}
NAME=stage-shift
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DB="$OUT/study.db"
if [ -f "$HERE/study.db" ] && [ ! -f "$DB" ]; then cp "$HERE"/study.db* "$OUT"/; fi
orch() { python -m orchestrator --db "sqlite:///$DB" "$@"; }
done_runs() {  # finished runs of one kind (Optuna user attr `kind`)
  python - "$DB" "$NAME" "$1" <<'PY'
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
try:
    study = optuna.load_study(study_name=sys.argv[2], storage=f"sqlite:///{sys.argv[1]}")
except Exception:
    print(-1); raise SystemExit
print(sum(1 for t in study.trials if t.user_attrs.get("kind") == sys.argv[3] and t.state.is_finished()))
PY
}
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

[ "$(done_runs baseline)" != "-1" ] || { log create; orch study create "$NAME" --from "$STUDY_FILE"; }
[ "$(done_runs baseline)" -ge 4 ] || { log baseline; orch study baseline "$NAME" --params "$BASELINE" --repeats 4 --fleet "$FLEET_FILE" --plain; }
log search; orch study run "$NAME" --fleet "$FLEET_FILE" --plain
[ "$(done_runs confirmation)" -ge 6 ] || { log confirm; orch study confirm "$NAME" --top 2 --repeats 3 --fleet "$FLEET_FILE" --plain; }
[ "$(done_runs early_exit)" -ge 2 ] || { log early-exit; orch study early-exit "$NAME" --variant best --max-steps "$MAX_STEPS" --runs 2 --fleet "$FLEET_FILE" --plain; }
orch study status "$NAME"
[ -z "${SKIP_EXPORT:-}" ] || { log done; exit 0; }
log export
orch export "$NAME" --format html --out "$OUT/$NAME.html"
orch export "$NAME" --format md --out "$OUT/$NAME.md"
log done
