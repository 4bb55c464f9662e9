"""A stand-in for a parameter-golf train_gpt.py, for end-to-end tests of env-var injection and the
parameter-golf log adapter: it reads its learning rates from the environment, as the real script does
(os.environ.get("MATRIX_LR", ...)), and prints its log in that format (era A, `key:value`)."""

import math
import os
import sys

MATRIX_LR = float(os.environ.get("MATRIX_LR", "0.04"))
SCALAR_LR = float(os.environ.get("SCALAR_LR", "0.04"))
TIED_EMBED_LR = float(os.environ.get("TIED_EMBED_LR", "0.05"))


def main():
    # bits per byte falls as the LRs approach their best values (0.02, 0.02, 0.03)
    bpb = 1.22 + 2.0 * (math.log(MATRIX_LR / 0.02) ** 2 + math.log(SCALAR_LR / 0.02) ** 2
                        + math.log(TIED_EMBED_LR / 0.03) ** 2) / 100
    total, elapsed = 2000, 0.0
    for step in range(0, total + 1, 500):
        elapsed = step * 43.5
        print(f"step:{step}/{total} val_loss:{bpb * 1.69:.4f} val_bpb:{bpb + (total - step) / total:.4f} "
              f"train_time:{elapsed:.0f}ms step_avg:{43.5:.2f}ms")
    print("Serialized model int8+zlib: 15815847 bytes (payload:17178912 raw_torch:17224025 payload_ratio:3.91x)")
    print("Total submission size int8+zlib: 15863489 bytes")
    print(f"final_int8_zlib_roundtrip val_loss:{bpb * 1.69:.4f} val_bpb:{bpb:.4f} eval_time:1401ms")
    print(f"final_int8_zlib_roundtrip_exact val_loss:{bpb * 1.69:.8f} val_bpb:{bpb:.8f}")


if __name__ == "__main__":
    sys.exit(main())
