"""The modded-nanogpt GPU study's data (docs/studies/2026-12-06-modded-nanogpt-h200): `python -m trainer.data
prepare` shards (GPT-2 tokens, BOS 50256 before each document) rewritten in the layout modded-nanogpt's
train_gpt.py reads, with a sha256 manifest for orch's data staging.

Two things the script needs that the prepared shards do not give as they are:
- at least two train files (its loader opens the second one as soon as it starts), named `fineweb_train_*.bin`;
- documents long enough for its per-batch document cap (`TRAIN_MAX_NUM_DOCS`: 64 in 16Ki tokens): the corpus has
  many short documents (fortunes, dictionary entries; a median of 161 tokens), so consecutive documents shorter
  than `--min-doc-tokens` are joined into one (the inner BOS tokens dropped);
- documents no longer than the shortest sequence it trains on: each sequence starts at a BOS and is cut at the
  stage's `train_max_seq_len` (896 tokens in stage 1 today), and the rest of that document is skipped. The corpus's
  long documents (books) made most of its tokens unreachable: the study's first GPU run ran out of train data at
  step 35 of 55 with 20.6M tokens on disk. Documents longer than `--max-doc-tokens` are cut into pieces of at most
  that many tokens, each starting with a BOS, so every token is trained on.

    python bench/public/mng_data.py --src data/gpt2 --out data/fineweb10B
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from orchestrator.warm.plan import sha256_file  # noqa: E402
from trainer.shards import load_shard, write_shard  # noqa: E402

BOS = 50256


def join_short_documents(tokens: np.ndarray, min_tokens: int) -> np.ndarray:
    starts = np.flatnonzero(tokens == BOS)
    if starts.size == 0 or starts[0] != 0:
        raise SystemExit("the shard does not start with a BOS token: not a `trainer.data prepare` shard")
    keep = np.ones(starts.size, dtype=bool)  # which BOS tokens stay
    run = 0
    lengths = np.diff(np.append(starts, tokens.size))
    for i, length in enumerate(lengths):
        if run and run < min_tokens:
            keep[i] = False  # joined to the document before it
            run += length - 1
        else:
            run = length
    drop = starts[~keep]
    return np.delete(tokens, drop)


def split_long_documents(tokens: np.ndarray, max_tokens: int) -> np.ndarray:
    """Each document longer than `max_tokens` (its BOS counted) cut into pieces of at most that many tokens, a BOS
    inserted before each piece after the first."""
    starts = np.flatnonzero(tokens == BOS)
    lengths = np.diff(np.append(starts, tokens.size))
    inserts = [start + k * (max_tokens - 1) + 1 for start, length in zip(starts, lengths)
               for k in range(1, -(-(length - 1) // (max_tokens - 1)))]
    return np.insert(tokens, np.asarray(inserts, dtype=np.int64), BOS)


def reachable_tokens(tokens: np.ndarray, max_seq_len: int) -> int:
    """The tokens a loader that starts every sequence at a BOS and cuts it at `max_seq_len` can reach."""
    lengths = np.diff(np.append(np.flatnonzero(tokens == BOS), tokens.size))
    return int(np.minimum(lengths, max_seq_len).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="folder of `trainer.data prepare` shards (*train*.bin, *val*.bin)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--train-shards", type=int, default=4)
    ap.add_argument("--min-doc-tokens", type=int, default=512)
    ap.add_argument("--max-doc-tokens", type=int, default=896, help="the script's shortest train_max_seq_len")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train = np.concatenate([load_shard(p) for p in sorted(glob.glob(os.path.join(a.src, "*train*.bin")))])
    val = np.concatenate([load_shard(p) for p in sorted(glob.glob(os.path.join(a.src, "*val*.bin")))])
    if not 2 <= a.min_doc_tokens <= a.max_doc_tokens:
        raise SystemExit("--min-doc-tokens must be at least 2 and at most --max-doc-tokens")
    before = train.size
    train, val = (split_long_documents(join_short_documents(t, a.min_doc_tokens), a.max_doc_tokens)
                  for t in (train, val))
    names = []
    cuts = np.flatnonzero(train == BOS)
    edges = [int(cuts[np.searchsorted(cuts, k * train.size // a.train_shards)]) for k in range(a.train_shards)]
    for k, (lo, hi) in enumerate(zip(edges, edges[1:] + [train.size])):  # each shard starts at a document
        names.append(f"fineweb_train_{k + 1:06d}.bin")
        write_shard(os.path.join(a.out, names[-1]), train[lo:hi])
    names.append("fineweb_val_000000.bin")
    write_shard(os.path.join(a.out, names[-1]), val)
    with open(os.path.join(a.out, "SHA256SUMS"), "w") as f:
        for name in names:
            digest = sha256_file(os.path.join(a.out, name))
            f.write(f"{digest}  {name}\n")
    docs = lambda t: int((t == BOS).sum())  # noqa: E731
    print(f"{train.size:,} train tokens in {a.train_shards} shards ({before:,} before; all reachable at sequences of "
          f"{a.max_doc_tokens}: {reachable_tokens(train, a.max_doc_tokens) == train.size}), {docs(train):,} documents; "
          f"{val.size:,} val tokens, {docs(val):,} documents -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
