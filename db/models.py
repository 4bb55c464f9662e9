"""SQLAlchemy 2 models of the results database. Every table is prefixed `orch_`, so Optuna's own tables
(studies, trials, ...) live beside them in the same database. Our rows link to Optuna's by
(study name, trial number).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy import false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    __tablename__ = "orch_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class MachineRow(Base):
    """Live state of a fleet machine (the inventory itself stays in fleet.yaml)."""

    __tablename__ = "orch_machines"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    launcher: Mapped[str] = mapped_column(String(16))
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    gpu_type: Mapped[str | None] = mapped_column(String(128))
    driver_version: Mapped[str | None] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="idle")  # idle | down (health; busy is derived)
    drain: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # `orch fleet drain`
    drain_reason: Mapped[str | None] = mapped_column(Text)  # `orch fleet drain --reason`
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(Text)


class StudyRow(Base):
    __tablename__ = "orch_studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    optuna_study_name: Mapped[str] = mapped_column(String(512))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated StudySpec
    spec_yaml: Mapped[str] = mapped_column(Text)  # the file as written
    spec_path: Mapped[str | None] = mapped_column(Text)
    spec_dir: Mapped[str | None] = mapped_column(Text)  # directory paths in the spec are relative to
    objective_metric: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="created")  # created | running | finished
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    trials: Mapped[list["TrialRow"]] = relationship(back_populates="study", order_by="TrialRow.number")


class TrialRow(Base):
    """One run of the trainer: what a record write-up needs to reproduce it, and its outcome."""

    __tablename__ = "orch_trials"
    __table_args__ = (UniqueConstraint("study_id", "number"), Index("ix_orch_trials_study_state", "study_id", "state"))
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("orch_studies.id"))
    number: Mapped[int] = mapped_column(Integer)  # == Optuna's trial number in the linked study
    optuna_trial_id: Mapped[int | None] = mapped_column(Integer)
    round: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(64))  # stable key of the params: repeats share it
    repeat_index: Mapped[int] = mapped_column(Integer, default=0)
    retry_of: Mapped[int | None] = mapped_column(Integer)  # trial number this one re-runs
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # sampled + derived
    # pending | running | complete | failed | lost | invalid
    state: Mapped[str] = mapped_column(String(16))
    machine: Mapped[str | None] = mapped_column(String(64))
    slot: Mapped[str | None] = mapped_column(String(64))  # "gpu:0,1" or "cpu:1"
    gpu_model: Mapped[str | None] = mapped_column(String(128))
    gpu_count: Mapped[int | None] = mapped_column(Integer)
    driver_version: Mapped[str | None] = mapped_column(String(64))
    command: Mapped[list[Any] | None] = mapped_column(JSON)  # argv, exactly as executed
    env: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the env the study set (secrets masked)
    container_image: Mapped[str | None] = mapped_column(String(512))
    container_image_id: Mapped[str | None] = mapped_column(String(128))
    code_revision: Mapped[str | None] = mapped_column(String(64))
    code_branch: Mapped[str | None] = mapped_column(String(255))
    code_dirty: Mapped[bool | None] = mapped_column(Boolean)
    file_checksums: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # path -> md5
    versions: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # read from the log
    injection_diff: Mapped[str | None] = mapped_column(Text)  # what parameter injection changed (a unified diff)
    workdir: Mapped[str | None] = mapped_column(Text)
    log_path: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_start: Mapped[str | None] = mapped_column(String(32))  # process start time, guards against pid reuse
    #: the launcher's reference to find the job again after a controller restart (a Slurm job id); None: the job
    #: ends with its controller (local, ssh, ray) or was never seen started
    job_ref: Mapped[str | None] = mapped_column(String(255))
    controller: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    exit_reason: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)  # the objective
    feasible: Mapped[bool | None] = mapped_column(Boolean)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # final metrics from the log
    note: Mapped[str | None] = mapped_column(Text)

    study: Mapped[StudyRow] = relationship(back_populates="trials")


class MetricPointRow(Base):
    __tablename__ = "orch_metric_points"
    __table_args__ = (UniqueConstraint("trial_id", "kind", "step"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("orch_trials.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # val | train
    step: Mapped[int] = mapped_column(Integer)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    val_loss: Mapped[float | None] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_time_ms: Mapped[float | None] = mapped_column(Float)
    step_avg_ms: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EventRow(Base):
    """Every state change, with its time: the audit trail of a study."""

    __tablename__ = "orch_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("orch_studies.id"), index=True)
    trial_number: Mapped[int | None] = mapped_column(Integer)
    machine: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # e.g. trial.state, machine.state, study.state, controller
    old: Mapped[str | None] = mapped_column(String(32))
    new: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)


class BatchRow(Base):
    """A batch of extra runs (`orch study confirm | early-exit | baseline`): beyond the study's budget, planned once
    so that running the command again after a crash resumes it. Its trials carry the user attr `batch` = id."""

    __tablename__ = "orch_batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("orch_studies.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # confirmation | early_exit | baseline
    args: Mapped[dict[str, Any]] = mapped_column(JSON)  # the command's arguments, to recognise a re-run
    runs: Mapped[list[Any]] = mapped_column(JSON)  # planned runs, in order: {"params": {...}, "variant": key}
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | done
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RequestRow(Base):
    """A request to the controller of a study, from any process: `orch study stop` (kind `stop`, mode `finish`
    or `now`) or `orch trial cancel` (kind `cancel`, trial_number). The controller reads the open ones as it
    loops, acts, and closes each with `done_at` and what it did (`outcome`)."""

    __tablename__ = "orch_requests"
    __table_args__ = (Index("ix_orch_requests_study_open", "study_id", "done_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("orch_studies.id"))
    kind: Mapped[str] = mapped_column(String(16))  # stop | cancel
    trial_number: Mapped[int | None] = mapped_column(Integer)
    mode: Mapped[str | None] = mapped_column(String(16))  # stop: finish | now
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str | None] = mapped_column(String(255))  # host:pid of the command
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(Text)


class SlotBlockRow(Base):
    """Up to 32 GPUs (kind `gpu`) or CPU slots (`cpu`) of one fleet machine, shared by every controller of the database
    (orchestrator/claims): bit i of `free` is unit 32 x block + i, set while no trial holds it. A claim clears the bits
    of its units in one conditional UPDATE, so at most one trial across all studies holds a GPU."""

    __tablename__ = "orch_slot_blocks"
    __table_args__ = (UniqueConstraint("machine", "kind", "block"), Index("ix_orch_slot_blocks_free", "kind", "free"))
    id: Mapped[int] = mapped_column(primary_key=True)
    machine: Mapped[str] = mapped_column(String(255))  # the machine's claim key (its name; local: name@host)
    kind: Mapped[str] = mapped_column(String(8))  # gpu | cpu
    block: Mapped[int] = mapped_column(Integer)
    units: Mapped[int] = mapped_column(Integer)  # units of the machine in this block (1..32)
    free: Mapped[int] = mapped_column(BigInteger)  # bit mask of the free ones


class SlotClaimRow(Base):
    """Who holds which units of a block (`bits`), for which trial, since when, until when: the lease its controller's
    heartbeat renews. A dead controller's claims are given again only once its launcher says the job no longer runs."""

    __tablename__ = "orch_slot_claims"
    __table_args__ = (Index("ix_orch_slot_claims_controller", "controller"),
                      Index("ix_orch_slot_claims_study", "study_id", "trial_number"))
    id: Mapped[int] = mapped_column(primary_key=True)
    block_id: Mapped[int] = mapped_column(ForeignKey("orch_slot_blocks.id"))
    bits: Mapped[int] = mapped_column(BigInteger)
    machine: Mapped[str] = mapped_column(String(255))
    units: Mapped[str] = mapped_column(String(255))  # e.g. gpu0,gpu1 (what the queue view shows)
    controller: Mapped[str] = mapped_column(String(255))  # holder (host:pid:start)
    study_id: Mapped[int | None] = mapped_column(Integer)  # no foreign key: a claim may outlive its study's rows
    trial_number: Mapped[int | None] = mapped_column(Integer)  # NULL: claimed, its trial not recorded yet
    slot: Mapped[str | None] = mapped_column(String(64))  # the holding trial's slot label (`gpu:0,1`)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_expires: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FleetDemandRow(Base):
    """A running study's place in the fleet's queue, kept by its controller: its policy (priority, cap), what it
    wants now, what it holds, its recent use (GPU-seconds, decayed) and, while it waits, since when and for what."""

    __tablename__ = "orch_fleet_demand"
    study_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    controller: Mapped[str] = mapped_column(String(255))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    gpus_per_trial: Mapped[int] = mapped_column(Integer, default=0)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    max_gpus: Mapped[int | None] = mapped_column(Integer)
    wanted: Mapped[int] = mapped_column(Integer, default=0)  # trials it would start now
    held: Mapped[int] = mapped_column(Integer, default=0)  # units (GPUs, or CPU slots) it holds
    usage: Mapped[float] = mapped_column(Float, default=0.0)  # decayed unit-seconds at `usage_at`
    usage_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    window_s: Mapped[float] = mapped_column(Float, default=600.0)  # the decay's time constant
    waiting_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str | None] = mapped_column(Text)  # what it waits for
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
