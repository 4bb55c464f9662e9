"""Bad input: exit status 2 and one line `trainer: error: <what> (<fix>)` on stderr, no heavy work."""

import re

import pytest

LINE = re.compile(r"^trainer: error: .+ \(.+\)$")

CASES = [
    (["--stage-durations", "0.5,0.3,0.3"], "sum to 1.1"),
    (["--stage-durations", "-0.5,1.2,0.3"], "negative"),
    (["--stage-durations", "0.5,0.5"], "entries"),
    (["--stage-batch-tokens", "100,256,512"], "not divisible by world size x sequence length"),
    (["--num-steps", "ten"], "not an integer"),
    (["--num-steps", "0"], "--num-steps"),
    (["--preset", "huge"], "unknown preset"),
    (["--device", "tpu"], "--device"),
    (["--no-such-flag", "1"], "unrecognized arguments"),
    (["--dataset", "shards", "--data-dir", "/nonexistent/dir"], "no train shards"),
]


@pytest.mark.parametrize("args,needle", CASES)
def test_bad_input_exit_2(run_trainer, args, needle):
    p = run_trainer(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]), p.stderr
    assert needle in lines[0]
    assert "@@metrics" not in p.stdout


def test_bad_env_value_names_the_variable(run_trainer):
    p = run_trainer(env={"TRAINER_COOLDOWN_FRAC": "abc"})
    assert p.returncode == 2 and "TRAINER_COOLDOWN_FRAC" in p.stderr


def test_corrupt_shard_exit_2(run_trainer, tmp_path):
    (tmp_path / "x_train_000001.bin").write_bytes(b"\x00" * 2000)
    (tmp_path / "x_val_000000.bin").write_bytes(b"\x00" * 2000)
    p = run_trainer("--dataset", "shards", "--data-dir", str(tmp_path))
    assert p.returncode == 2 and "magic" in p.stderr and LINE.match(p.stderr.strip())


def test_wrong_tokenizer_data_exit_2(run_trainer, data_dir):
    # byte-level shards under the GPT-2 preset: no document-start token 50256
    from trainer.data import stdlib_bytes_dir

    p = run_trainer("--preset", "small", "--data-dir", stdlib_bytes_dir(data_dir), "--device", "cpu")
    assert p.returncode == 2 and "document-start" in p.stderr
