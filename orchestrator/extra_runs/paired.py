"""`orch study confirm NAME --paired --baseline ...`: machine-blocked timing. Each machine of the fleet that can
run the study gets one block (`--blocks-per-machine` more) of four runs, candidate (A) and baseline (B) in the
order A B B A, one after another on that machine and nothing else of the batch beside them, so the two are
timed on the same hardware, interleaved. The analysis (orchestrator/certify/paired.py) takes the machine as a
block. Candidate runs are of kind `confirmation` (they count for the loss test too), baseline runs `baseline`.

A run lost to the machine is re-run there as a recorded retry (the study's `retries`); a block whose machine
stays away is left unfinished: the command says so, and running it again with its arguments goes on.

`--baseline unmodified` times the trainer as it is: the B runs (kind `unmodified`) get the study's command and
env and none of its parameters, arguments or injection (jobs.build_job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial

from db import BatchRow, Database

from ..study import lease
from ..certify.paired import ABBA, paired_timing
from ..analysis.results import full_records
from ..config.errors import OrchError
from ..config.fleet import Fleet
from ..config.study import StudySpec
from ..records import variant_key
from ..launchers.base import Slot
from ..fleet.preflight import check_fleet_fits, declared_gpus
from ..fleet.scheduler import matches_labels
from ..study.lifecycle import load_study_row, open_study
from ..study.queue import batch_of, claim, waiting_trials
from . import batches
from .controller import BatchTrials, run_batch
from .selection import arg_error, check_job, parse_params, pick_variant
from .sequential import _pick_rule_variant

KIND = "paired"  # the batch's kind (its runs are confirmation A and baseline B)


@dataclass
class PairedRequest:
    name: str
    command: str
    args: dict[str, Any]
    runs: list[dict[str, Any]]  # the planned runs (empty when the open batch resumes)


def block_machines(fleet: Fleet, spec: StudySpec) -> list[str]:
    """Machines that can run the study's trials (labels, declared GPUs): one block each."""
    out = []
    for m in fleet.machines:
        gpus = declared_gpus(m.gpus)
        if matches_labels(m, spec.resources.labels) and (gpus is None or gpus >= spec.resources.gpus):
            out.append(m.name)
    return out


def plan_blocks(machines: list[str], candidate: dict[str, Any], baseline: dict[str, Any] | None,
                per_machine: int) -> list[dict]:
    """ABBA blocks, one per machine (per_machine rounds of them). `baseline` None: the unmodified trainer (its
    runs carry the candidate's values only because every Optuna trial needs values; the job uses none of them)."""
    runs = []
    block = 0
    for _ in range(per_machine):
        for machine in machines:
            for pos, role in enumerate(ABBA):
                attrs = {"paired_block": block, "paired_machine": machine, "paired_pos": pos, "paired_role": role}
                if role == "A":
                    params, kind = candidate, "confirmation"
                elif baseline is None:
                    params, kind = candidate, "unmodified"
                    attrs["unmodified"] = True
                else:
                    params, kind = baseline, "baseline"
                runs.append({"params": params, "variant": "unmodified" if kind == "unmodified" else variant_key(params),
                             "repeat": block, "kind": kind, "attrs": attrs})
            block += 1
    return runs


def paired_request(db: Database, name: str, fleet: Fleet, variant: str, baseline: str,
                   per_machine: int) -> PairedRequest:
    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    args = {"mode": "paired", "variant": variant.strip(), "baseline": baseline.strip(), "blocks_per_machine": per_machine}
    command = f"orch study confirm {name} --paired"
    batch = batches.open_batch(db, row.id, KIND)
    if batch is not None and batches.command_args(batch.args) == args:
        return PairedRequest(name, command, args, [])
    candidate = (_pick_rule_variant(db, row, spec) if variant.strip() == "best" else None) or pick_variant(
        db, row, spec, variant)
    check_job(spec, name, candidate, None, "--variant")
    if baseline.strip() == "unmodified":
        base = None
    else:
        base = parse_params(spec, baseline, "--baseline") if "=" in baseline else pick_variant(db, row, spec, baseline)
        if variant_key(base) == variant_key(candidate):
            raise arg_error("--baseline", "the baseline is the candidate itself", "name another variant, e.g. the "
                            "study's baseline: --baseline 'stage1=0.3333,stage2=0.3333', or --baseline unmodified")
        check_job(spec, name, base, None, "--baseline")
    machines = block_machines(fleet, spec)
    if not machines:
        raise arg_error("--paired", f"{fleet.source}: no machine of the fleet can run the study's trials",
                        "add a machine with the study's labels and GPUs to the fleet file")
    return PairedRequest(name, command, args, plan_blocks(machines, candidate, base, per_machine))


class PairedTrials(BatchTrials):
    """A paired batch: on each machine its block's runs one at a time, in block order."""

    def _batch_trials(self) -> list[FrozenTrial]:
        return [t for t in self.run.study.optuna.get_trials(deepcopy=False) if batch_of(t) == self.batch_id]

    def _ready(self) -> dict[str, FrozenTrial]:
        """machine -> the queued trial its block runs next (a block runs one trial at a time, in order)."""
        trials = self._batch_trials()
        running = {t.number for t in trials if t.number in self.run.running}
        by_block: dict[int, list[FrozenTrial]] = {}
        for t in trials:
            by_block.setdefault(int(t.user_attrs.get("paired_block", -1)), []).append(t)
        waiting = {t.number for t in waiting_trials(self.run.study.optuna)}
        ready: dict[str, FrozenTrial] = {}
        for block, group in sorted(by_block.items()):
            machine = str(group[0].user_attrs.get("paired_machine"))
            if machine in ready or any(t.number in running for t in group):
                continue
            busy_machine = any(str(t.user_attrs.get("paired_machine")) == machine and t.number in running
                               for t in trials)
            if busy_machine:
                continue
            done = {int(t.user_attrs["paired_pos"]) for t in group
                    if t.state.is_finished() and t.number not in waiting and not self._lost(t)}
            nxt = next((p for p in range(len(ABBA)) if p not in done), None)
            if nxt is None:
                continue
            queued = [t for t in group if t.number in waiting and int(t.user_attrs["paired_pos"]) == nxt]
            if queued:
                ready[machine] = min(queued, key=lambda t: t.number)
        return ready

    def _lost(self, trial: FrozenTrial) -> bool:
        """A finished trial that was lost (its retry, queued, takes its place in the block)."""
        return any(t.user_attrs.get("retry_of") == trial.number for t in self._batch_trials())

    def _free_by_machine(self) -> dict[str, list[Slot]]:
        out: dict[str, list[Slot]] = {}
        for slot in self.run.scheduler.free({r.slot for r in self.run.running.values()}):
            out.setdefault(slot.machine, []).append(slot)
        return out

    def slots_to_fill(self) -> int:
        queued = len(self.queued())
        self.run.progress.queued, self.run.progress.max_trials = queued, self.batch_size
        free = self._free_by_machine()
        return sum(1 for machine in self._ready() if machine in free)

    def choose(self, free: list[Slot]) -> list[Slot]:
        ready, by_machine = self._ready(), self._free_by_machine()
        chosen = []
        for machine in ready:
            slots = by_machine.get(machine, [])
            if slots:
                chosen.append(min(slots, key=lambda s: s.index))
        return chosen

    def ask(self, slot: Slot):
        trial = self._ready().get(slot.machine)
        return None if trial is None else claim(self.run.study.optuna, self.run.dists, [trial])


def run_paired(db: Database, name: str, fleet: Fleet, request: PairedRequest, reporter,
               heartbeat_s: float | None = None, signals: bool = False) -> dict[str, Any]:
    from .commands import reporter_message
    from .summary import batch_summary

    row = load_study_row(db, name)
    spec = StudySpec.model_validate(row.spec)
    check_fleet_fits(fleet, spec)
    batch = batches.open_batch(db, row.id, KIND)
    resumed = batches.check_resumable(batch, request.args, request.command)
    owner = lease.controller_id()
    lease.acquire(db, row.id, owner)
    try:
        if not resumed:
            batch = batches.create_batch(db, row, KIND, request.args, request.runs)
        opened = open_study(db, name)
        batches.enqueue_missing(opened.optuna, batch)
        blocks = len({r["attrs"]["paired_block"] for r in batch.runs})
        reporter_message(reporter, f"{'resuming' if resumed else 'queued'} paired batch #{batch.id}: {blocks} ABBA "
                         f"block(s), {len(batch.runs)} runs")
        run_batch(db, name, fleet, batch_id=batch.id, batch_size=len(batch.runs), reporter=reporter,
                  command=request.command, resume_hint="", heartbeat_s=heartbeat_s, signals=signals, source=PairedTrials)
        left = batches.unfinished(opened.optuna, batch)
        if not left:
            batches.close_batch(db, batch)
    finally:
        lease.release(db, row.id, owner)
    with db.session() as s:
        batch = s.get(BatchRow, batch.id)
    row = load_study_row(db, name)
    summary = batch_summary(db, row, batch, resumed)
    constraint = spec.objective.constraints[0].metric if spec.objective.constraints else None
    timing = paired_timing([r for r in full_records(db, row) if r["state"] != "invalid"], batch.id,
                           spec.objective.metric, constraint)
    summary["paired"] = {"difference": timing.difference, "interval": timing.interval, "df": timing.df,
                         "welch_interval": timing.welch_interval, "blocks": timing.blocks, "text": timing.text(),
                         "candidate_mean": timing.candidate_mean, "baseline_mean": timing.baseline_mean}
    if left:
        machines = sorted({batch.runs[i]["attrs"]["paired_machine"] for i in left})
        raise OrchError(f"paired batch #{batch.id}: {len(left)} planned run(s) on {', '.join(machines)} could not run "
                        "(machine down or draining) (fix: bring the machine back, see `orch fleet status`, then run "
                        f"`{request.command}` with the same arguments again)")
    return summary
