#!/usr/bin/env bash
# The study, resumable: run from the repository root on a one-GPU machine. Needs the fetched script in
# .devcarry/parameter-golf/train_gpt.py and the data in data/sp1024/ (bench/public/pg_data.py). $OUT gets the database.
#   bash docs/studies/2026-12-06-parameter-golf-h200/run.sh
exec bash bench/one_gpu_study.sh docs/studies/2026-12-06-parameter-golf-h200 pg-h200
