"""The CPU tiny path end to end, with the exact command line of docs/contracts.md."""

import re
import time

HUMAN = re.compile(r"^step:(\d+)/(\d+) val_loss:(\d+\.\d+) train_time:(\d+)ms step_avg:(\d+(?:\.\d+)?)ms$")
FINAL_KEYS = {"train_time_ms", "val_loss", "step", "total_steps", "step_avg_ms", "tokens", "peak_memory_mib",
              "exit_reason", "world_size", "gpu_name", "versions"}


def test_tiny_trains_fast_and_loss_falls(run_trainer):
    t0 = time.time()
    p = run_trainer("--preset", "tiny", "--stage-durations", "0.4,0.3,0.3", "--num-steps", "300")
    wall = time.time() - t0
    assert p.returncode == 0, p.stderr
    assert wall < 30, f"tiny run took {wall:.1f}s"
    events = [m["event"] for m in p.metrics]
    assert events[0] == "start" and events[-1] == "final"
    assert {"train", "val"} <= set(events)
    start = p.metrics[0]
    assert start["n_params"] > 100_000 and start["device"] == "cpu" and "versions" in start
    vals = [m for m in p.metrics if m["event"] == "val"]
    assert vals[0]["step"] == 0 and vals[-1]["step"] == 300
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 2.0  # ln(256)=5.55 -> ~2.3
    for m in vals:
        assert set(m) == {"event", "step", "total_steps", "val_loss", "train_time_ms", "step_avg_ms"}
    final = p.metrics[-1]
    assert FINAL_KEYS <= set(final)
    assert final["exit_reason"] == "completed" and final["step"] == final["total_steps"] == 300
    assert final["world_size"] == 1 and final["gpu_name"] is None and final["versions"]["torch"]
    assert final["val_loss"] == vals[-1]["val_loss"]
    # where the time before the first timed step went, phase by phase, within the run's wall time
    startup = final["startup_s"]
    assert list(startup) == ["process", "import", "device", "data", "model", "optimizers", "compile", "start_line",
                             "warmup", "first_val"]
    assert all(v >= 0 for v in startup.values()) and 0 < sum(startup.values()) < wall
    assert final["compile_cache"] == {}  # eager: nothing compiled, no cache consulted
    assert final["tokens"] == 120 * 128 + 90 * 256 + 90 * 512
    assert final["train_time_ms"] > 0 and abs(final["step_avg_ms"] - final["train_time_ms"] / 300) < 0.1
    # human lines in the modded-nanogpt style, one per val event, same numbers
    human = [HUMAN.match(l) for l in p.stdout.splitlines() if HUMAN.match(l)]
    assert len(human) == len(vals)
    assert [float(h.group(3)) for h in human] == [m["val_loss"] for m in vals]
    assert all(not l.startswith("@@metrics") or l.count("\n") == 0 for l in p.stdout.splitlines())
    # train events carry the train loss
    trains = [m for m in p.metrics if m["event"] == "train"]
    assert trains and all({"step", "train_loss", "train_time_ms"} <= set(m) for m in trains)


def test_same_seed_same_result_and_stage_cost(run_trainer):
    a = run_trainer("--num-steps", "20", "--val-every", "0", "--log-every", "1")
    b = run_trainer("--num-steps", "20", "--val-every", "0", "--log-every", "1")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    la = [m["train_loss"] for m in a.metrics if m["event"] == "train"]
    lb = [m["train_loss"] for m in b.metrics if m["event"] == "train"]
    assert la == lb and a.metrics[-1]["val_loss"] == b.metrics[-1]["val_loss"]
    c = run_trainer("--num-steps", "20", "--val-every", "0", "--seed", "7")
    assert c.metrics[-1]["val_loss"] != a.metrics[-1]["val_loss"]


def test_early_exit(run_trainer):
    p = run_trainer("--num-steps", "100", "--max-steps", "150", "--val-every", "10", "--early-exit-at", "3.2")
    assert p.returncode == 0, p.stderr
    final = p.metrics[-1]
    assert final["exit_reason"] == "early_exit"
    assert final["val_loss"] <= 3.2 and final["step"] < 150 and final["total_steps"] == 150
    assert final["step"] % 10 == 0


def test_divergence_exits_3(run_trainer):
    p = run_trainer("--num-steps", "30", "--muon-lr", "1e30", "--embed-lr", "1e30")
    assert p.returncode == 3, p.stderr
    final = p.metrics[-1]
    assert final["event"] == "final" and final["exit_reason"] == "diverged" and final["step"] < 30


def test_torchrun_two_ranks_matches_one(run_trainer, data_dir):
    """torchrun --nproc_per_node=2 on CPU (gloo): averaged gradients + sharded Muon = the 1-rank run."""
    import os
    import subprocess
    import sys

    from _trainer_cli import ROOT, parse_metrics

    args = ["--num-steps", "20", "--val-every", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINER_")}
    env.update(OMP_NUM_THREADS="1", TRAINER_DATA_DIR=data_dir, PYTHONPATH=str(ROOT))
    # --standalone: torchrun's own store binds port 0 and keeps it (a port found free and closed again can be taken
    # by another test's server before torchrun binds it)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "trainer", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    m2 = parse_metrics(p.stdout)
    assert [m["event"] for m in m2].count("final") == 1  # rank 0 prints, rank 1 is silent
    one = run_trainer(*args)
    f1, f2 = one.metrics[-1], m2[-1]
    assert f2["world_size"] == 2 and f2["tokens"] == f1["tokens"]
    assert abs(f1["val_loss"] - f2["val_loss"]) < 2e-3


def test_the_process_phase_is_read_to_the_clock_tick():
    """startup_s["process"] counts from the process's own start: a child that reports it right away must report less
    than the parent saw from spawning it to its exit (psutil's start time, on a boot time in whole seconds, was up to
    1 s late and failed this)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "import time; from trainer.train import _process_start; print(time.time() - _process_start())"
    for _ in range(3):
        began = time.monotonic()
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        wall = time.monotonic() - began
        assert 0 <= float(out.stdout) <= wall + 0.02, (out.stdout, wall)  # 0.02: one 10 ms clock tick and rounding
