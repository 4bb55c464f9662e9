"""Extra runs beyond a study's budget: confirmation of the best variants (`orch study confirm`), early-exit
analysis (`orch study early-exit`) and baseline runs (`orch study baseline`); docs/runs.md.

Each command plans a *batch* (an `orch_batches` row), queues its runs as Optuna trials with fixed params and
the user attrs `kind`, `batch`, `batch_index`, and runs them through the study's `Controller` fed by `BatchTrials`
(the same recovery, lease and log handling as `orch study run`). Running the command again after a crash resumes
the open batch instead of queueing another.

Modules: `selection` (which variant: ranking, `best`, `#N`, `k=v,...`), `batches` (planning and queueing),
`controller` (the batch's dispatch: its own queue, spread over machines), `summary` (the result tables),
`commands` (the three commands end to end).
"""
