import pytest

from trainer.config import PRESETS, ConfigError, parse_config
from trainer.train import Schedule


def test_env_and_flag_precedence():
    env = {"TRAINER_NUM_STEPS": "123", "TRAINER_STAGE_DURATIONS": "0.5,0.25,0.25", "TRAINER_SEED": "9"}
    cfg = parse_config([], env)
    assert cfg.num_steps == 123 and cfg.stage_durations == [0.5, 0.25, 0.25] and cfg.seed == 9
    cfg = parse_config(["--num-steps", "7", "--stage-durations=0.2,0.4,0.4"], env)
    assert cfg.num_steps == 7 and cfg.stage_durations == [0.2, 0.4, 0.4] and cfg.seed == 9  # flag wins
    assert parse_config([], {}).num_steps == PRESETS["tiny"]["num_steps"]  # preset default
    assert parse_config([], {"TRAINER_PRESET": "gpt2"}).model_dim == 768
    assert parse_config(["--preset", "tiny"], {"TRAINER_PRESET": "gpt2"}).preset == "tiny"
    assert parse_config([], {"TRAINER_NUM_STEPS": ""}).num_steps == 300  # empty env = unset


def test_windows_and_bools():
    cfg = parse_config(["--stage-windows", "16/32,64,128/128", "--tie-embed", "1"], {})
    assert cfg.stage_windows == [(16, 32), (64, 64), (128, 128)] and cfg.tie_embed is True


def test_world_size_divisibility():
    with pytest.raises(ConfigError, match="world size"):
        parse_config(["--stage-batch-tokens", "96,256,512"], {"WORLD_SIZE": "2"})
    parse_config([], {"WORLD_SIZE": "2"})


def test_schedule_stages_and_lr():
    cfg = parse_config(["--num-steps", "100", "--stage-durations", "0.4,0.3,0.3", "--cooldown-frac", "0.5",
                        "--extension-steps", "10", "--stage-lr-mults", "1,1,0.5"], {})
    s = Schedule(cfg)
    assert [s.stage_index(i) for i in (0, 39, 40, 69, 70, 99, 105)] == [0, 0, 1, 1, 2, 2, 2]
    assert s.lr_mult(0) == 1.0 and s.lr_mult(50) == 1.0
    assert s.lr_mult(75) == pytest.approx((0.5 + 0.5 * 0.1) * 0.5)
    assert s.lr_mult(100) == pytest.approx(0.1 * 0.5) and s.lr_mult(109) == pytest.approx(0.05)
    assert cfg.total_steps == 110
    assert parse_config(["--max-steps", "150"], {}).total_steps == 150
