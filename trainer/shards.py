"""Token shard files (modded-nanogpt / llm.c format): a header of 256 little-endian int32 (magic 20240520, version
1, token count, zeros), then that many uint16 tokens. Written atomically, validated on read."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from trainer.config import ConfigError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


class DataError(ConfigError):
    """Missing or corrupt data: exit status 2 like any other bad input."""


# ---------------------------------------------------------------------------------------------
# shard files


def write_shard(path: str, tokens) -> None:
    """Write tokens (ints < 65536) as one shard, atomically: a reader never sees a partial file."""
    arr = np.asarray(tokens)
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise ValueError("tokens must fit in uint16")
    arr = arr.astype("<u2", copy=False)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, arr.size)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.tobytes())
            f.write(arr.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_header(path: str) -> int:
    """Validate a shard's header and size; return its token count. Raises DataError."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror}", "check the path and permissions")
    if len(raw) < HEADER_BYTES:
        raise DataError(f"shard {path} is truncated: {size} bytes, shorter than the 1024-byte header",
                        "rebuild or re-download the shard")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise DataError(f"shard {path} has magic {int(header[0])}, not {MAGIC}",
                        "this is not a modded-nanogpt/llm.c token shard; rebuild it")
    if header[1] != VERSION:
        raise DataError(f"shard {path} has version {int(header[1])}, not {VERSION}", "rebuild the shard")
    n = int(header[2])
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise DataError(f"shard {path} is truncated or corrupt: header says {n} tokens, "
                        f"file holds {(size - HEADER_BYTES) // 2}", "rebuild or re-download the shard")
    return n


def load_shard(path: str) -> np.ndarray:
    """Memory-map a validated shard as uint16 tokens."""
    n = read_header(path)
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
