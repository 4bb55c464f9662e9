"""A stand-in for modded-nanogpt's train_gpt.py, for end-to-end tests of the modded-nanogpt injector and log
adapter (the real script needs 8 GPUs and FineWeb). Like the real one it keeps its schedule as module-level
constants, which the orchestrator patches in a per-trial copy through the syntax tree, and it prints its log in
modded-nanogpt's format: the script's own source first, then `step:S/T val_loss:X train_time:Nms` lines."""

import random
import sys
from dataclasses import dataclass

@dataclass
class TrainingStage:
    duration: float
    batch_size: int
    seq_len: int

TRAINING_STAGES = [
    TrainingStage(duration=1/3, batch_size=8 * 2048 * 8, seq_len=896),   # stage 1: cheap steps
    TrainingStage(duration=1/3, batch_size=16 * 2048 * 8, seq_len=2048),
    TrainingStage(duration=1/3, batch_size=24 * 2048 * 8, seq_len=2048),  # stage 3: dear steps
]
NUM_SCHEDULED_ITERATIONS = 1450
NUM_EXTENSION_ITERATIONS = 40
SEED = 0

def main():
    print(open(__file__).read())
    print("=" * 100)
    costs = [21.0, 38.0, 55.0]
    total = NUM_SCHEDULED_ITERATIONS + NUM_EXTENSION_ITERATIONS
    fractions = [s.duration for s in TRAINING_STAGES]
    elapsed = 0.0
    rng = random.Random(SEED)
    final = 3.20 + 0.6 * fractions[0] ** 2 - 0.1 * fractions[2] + rng.gauss(0, 0.002)
    bounds = [round(sum(fractions[: i + 1]) * NUM_SCHEDULED_ITERATIONS) for i in range(3)]
    for step in range(total + 1):
        if step:
            stage = next((i for i, b in enumerate(bounds) if step <= b), 2)
            elapsed += costs[stage]
        if step % 250 == 0 or step == total:
            loss = final + 3.0 * (1 - step / total)
            print(f"step:{step}/{total} val_loss:{loss:.4f} train_time:{elapsed:.0f}ms step_avg:{elapsed / max(step, 1):.2f}ms")
    print("peak memory allocated: 30000 MiB reserved: 31000 MiB")

if __name__ == "__main__":
    sys.exit(main())
