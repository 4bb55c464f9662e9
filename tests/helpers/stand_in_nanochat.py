"""A stand-in for nanochat's scripts/base_train.py, for end-to-end tests of flag injection and the nanochat log
adapter: it takes the same argparse flags (`--depth`, `--target-param-data-ratio`) and prints nanochat's stdout
lines (`step N/M | ... | dt: | tok/sec: | bf16_mfu:`, `Validation bpb:`, `CORE metric:`, `Total training time:`)."""

import argparse

parser = argparse.ArgumentParser(description="stand-in base_train")
parser.add_argument("--run", type=str, default="dummy", help="wandb run name")
parser.add_argument("--depth", type=int, default=20, help="depth of the Transformer model")
parser.add_argument("--target-param-data-ratio", type=float, default=8.25, help="tokens per parameter")
args = parser.parse_args()

total = 20
# a deeper model trained on more data per parameter scores higher, with diminishing returns
core = 0.20 + 0.004 * args.depth - 0.002 * (args.target_param_data_ratio - 10.0) ** 2
dt_ms = 40.0 * args.depth * args.target_param_data_ratio
print(f"Using user-provided number of iterations: {total:,}")
print("Step 00000 | Validation bpb: 3.218765")
elapsed_min = 0.0
for step in range(total):
    if step > 10:
        elapsed_min += dt_ms / 60000
    print(f"step {step:05d}/{total:05d} ({100 * step / total:.2f}%) | loss: {10.5 - 0.3 * step:.6f} | lrm: 1.00 | "
          f"dt: {dt_ms:.2f}ms | tok/sec: 354,187 | bf16_mfu: 48.31 | epoch: 1 pq: 0 rg: {step} | "
          f"total time: {elapsed_min:.2f}m")
print(f"Step {total:05d} | Validation bpb: 0.912345")
print(f"Step {total:05d} | CORE metric: {core:.4f}")
print("Peak memory usage: 75042.13MiB")
print(f"Total training time: {elapsed_min:.2f}m")
print("Minimum validation bpb: 0.912345")
