"""A trainer that floods its log (fault 7): one line of LONG_MB megabytes without a newline, then JUNK_MB
megabytes of 64 KiB lines with a validation line every 1000 of them, then the project's final metrics line.

    python spew_trainer.py LONG_MB JUNK_MB
"""

from __future__ import annotations

import json
import sys

CHUNK = 1024 * 1024


def main() -> int:
    long_mb, junk_mb = int(sys.argv[1]), int(sys.argv[2])
    out = sys.stdout.buffer
    emit = lambda obj: out.write(b"@@metrics " + json.dumps(obj).encode() + b"\n")  # noqa: E731
    emit({"event": "start", "versions": {"python": sys.version.split()[0]}, "world_size": 1, "gpu_name": None})
    block = b"x" * CHUNK
    for _ in range(long_mb):
        out.write(block)
    out.write(b"\n")
    line = b"w" * (64 * 1024 - 1) + b"\n"
    lines = junk_mb * 16
    step = 0
    for i in range(1, lines + 1):
        out.write(line)
        if i % 1000 == 0:
            step += 1
            emit({"event": "val", "step": step, "total_steps": lines // 1000, "val_loss": 4.0 - step * 0.01,
                  "train_time_ms": step * 100})
    emit({"event": "final", "step": step, "total_steps": step, "val_loss": 3.25, "train_time_ms": 1234.0,
          "exit_reason": "completed", "world_size": 1, "gpu_name": None})
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
