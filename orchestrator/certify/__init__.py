"""Record-grade evidence: a study's results judged by the tracks' own rules.

- `tracks`: the tracks (modded-nanogpt, parameter-golf, nanochat) as plug-ins: their test and per-run checks.
- `sequential`: the group-sequential design `orch study confirm` plans and reads look by look.
- `evidence`: the certification of a variant from its confirmation runs (lost runs kept apart).
- `paired`: machine-blocked (ABBA) timing of a candidate against a baseline.
- `step_cut`: would cutting steps from the baseline give the same time at the same loss?

Pure functions over a study's records (`analysis.results.full_records`); nothing here writes.
"""
