#!/usr/bin/env bash
# The study, resumable: run from the repository root on a one-GPU machine. Needs the three files of the fetched
# modded-nanogpt checkout in .devcarry/modded-nanogpt/, the data in data/fineweb10B/ (bench/public/
# mng_data.py) and GPT-2's BPE files in $TIKTOKEN_CACHE_DIR (default .devcarry/tiktoken-cache). $OUT gets the database.
#   bash docs/studies/2026-12-06-modded-nanogpt-h200/run.sh
export TIKTOKEN_CACHE_DIR=${TIKTOKEN_CACHE_DIR:-$PWD/.devcarry/tiktoken-cache}
exec bash bench/one_gpu_study.sh docs/studies/2026-12-06-modded-nanogpt-h200 mng-h200
