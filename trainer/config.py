"""Configuration: presets, the command line, TRAINER_* environment variables and validation.

Every option is a flag ``--some-flag`` and also an environment variable ``TRAINER_SOME_FLAG``;
a flag given on the command line wins over the environment, which wins over the preset.
Bad input raises :class:`ConfigError`; ``main`` turns it into one stderr line
``trainer: error: <what> (<fix>)`` and exit status 2, before torch is even imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_ERROR = 1
SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


class ConfigError(Exception):
    """Bad user input. ``what`` says what is wrong, ``fix`` how to fix it."""

    def __init__(self, what: str, fix: str):
        super().__init__(f"{what} ({fix})")
        self.what, self.fix = what, fix


@dataclass
class Stage:
    """One training stage of the schedule."""

    frac: float  # fraction of the scheduled steps
    seq_len: int  # tokens per sequence
    batch_tokens: int  # tokens per optimizer step over all ranks
    lr_mult: float  # multiplies every learning rate during the stage
    window_short: int  # sliding attention window of the "short" layers (tokens)
    window_long: int  # window of the "long" layers (every 4th and the last)


@dataclass
class Config:
    preset: str = "tiny"
    # model
    vocab_size: int = 256
    n_layer: int = 4
    model_dim: int = 128
    n_head: int = 4
    mlp_mult: int = 4
    tie_embed: bool = False
    logit_softcap: float = 15.0
    rope_base: float = 1024.0
    # schedule
    stage_durations: list = field(default_factory=lambda: [0.4, 0.3, 0.3])
    stage_seq_lens: list = field(default_factory=lambda: [32, 64, 128])
    stage_batch_tokens: list = field(default_factory=lambda: [512, 1024, 2048])
    stage_lr_mults: list = field(default_factory=lambda: [1.0, 1.0, 1.0])
    stage_windows: list = field(default_factory=lambda: [(32, 32), (64, 64), (128, 128)])
    num_steps: int = 300
    extension_steps: int = 0
    cooldown_frac: float = 0.4
    final_lr_frac: float = 0.1
    max_steps: int = 0  # 0: num_steps + extension_steps
    early_exit_at: float = 0.0  # 0: off
    # evaluation
    val_every: int = 100
    val_tokens: int = 16384
    val_seq_len: int = 0  # 0: the last stage's sequence length
    log_every: int = 10
    # optimizer
    muon_lr: float = 0.05
    muon_momentum: float = 0.95
    muon_wd: float = 0.0
    embed_lr: float = 0.3
    head_lr: float = 0.008
    scalar_lr: float = 0.04
    adam_beta1: float = 0.8
    adam_beta2: float = 0.95
    ns_steps: int = 5
    # data
    data_dir: str = ""
    dataset: str = "stdlib-bytes"  # stdlib-bytes (built automatically) | shards (GPT-2 .bin files)
    train_files: str = ""
    val_files: str = ""
    bos_id: int = 0
    align_bos: bool = True
    # runtime
    seed: int = 1337
    device: str = "auto"
    threads: int = 0  # 0: leave torch's default (OMP_NUM_THREADS)
    compile: str = "auto"  # auto (on for cuda) | 1 | 0
    # auto (= sdpa) | sdpa | flex (FlexAttention: block-sparse windows) | varlen (FlashAttention's variable-length
    # kernel, torch >= 2.10); flex and varlen: CUDA, documents masked apart
    attn: str = "auto"
    kernels: str = "torch"  # torch | triton (kernels/ package, cuda only)
    ce_kernel: str = "auto"  # auto (= triton on cuda) | triton | torch: the cross-entropy over the head's logits
    warmup_steps: int = 0  # compile warm-up steps (state restored afterwards, not timed)
    dtype: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp32
    micro_batch_tokens: int = 0  # per rank and forward pass; 0: the whole local batch at once
    fp8_head: bool = False  # LM head matmul in FP8 (trainer/fp8.py; emulated in fp32 on CPU)
    sdpa_backend: str = "auto"  # with --attn sdpa: auto (PyTorch's choice) | flash | cudnn | efficient | math
    init_on_device: bool = True  # build and initialise the model on its device (0: on the CPU, then moved)

    @property
    def stages(self) -> list[Stage]:
        return [
            Stage(f, s, b, m, w[0], w[1])
            for f, s, b, m, w in zip(
                self.stage_durations,
                self.stage_seq_lens,
                self.stage_batch_tokens,
                self.stage_lr_mults,
                self.stage_windows,
            )
        ]

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps > 0 else self.num_steps + self.extension_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Presets: model size and default schedule. Anything here can be overridden by flags / env.
PRESETS: dict[str, dict] = {
    # ~0.5M parameters, bytes as tokens; ~10-15 s on one CPU thread (300 steps).
    "tiny": dict(
        vocab_size=256, n_layer=4, model_dim=96, n_head=3, tie_embed=False, logit_softcap=15.0,
        stage_durations=[0.4, 0.3, 0.3], stage_seq_lens=[32, 64, 128],
        stage_batch_tokens=[128, 256, 512], stage_lr_mults=[1.0, 1.0, 1.0],
        stage_windows=[(32, 32), (64, 64), (128, 128)], num_steps=300, extension_steps=0,
        cooldown_frac=0.4, val_every=100, val_tokens=8192, log_every=10,
        muon_lr=0.05, embed_lr=0.05, head_lr=0.01, dataset="stdlib-bytes", bos_id=0,
    ),
    # ~20M non-embedding parameters, GPT-2 tokens: a one-GPU development size.
    "small": dict(
        vocab_size=50304, n_layer=6, model_dim=512, n_head=4, tie_embed=False, logit_softcap=15.0,
        stage_durations=[0.36, 0.31, 0.33], stage_seq_lens=[512, 1024, 1024],
        stage_batch_tokens=[65536, 131072, 196608], stage_lr_mults=[1.0, 1.0, 1.0],
        stage_windows=[(512, 512), (1024, 1024), (1024, 1024)], num_steps=1000, extension_steps=20,
        cooldown_frac=0.5, val_every=125, val_tokens=262144, log_every=25, micro_batch_tokens=65536,
        muon_lr=0.05, embed_lr=0.3, head_lr=0.008, dataset="shards", bos_id=50256,
    ),
    # GPT-2 small shape: 12 layers, 768 wide, 6 heads of 128; 124M parameters with a tied head, 162M untied.
    # Windows default to the full sequence (flash SDPA, the path measured on GPU); sliding windows, e.g.
    # --stage-windows 256/768,512/1536,768/2048, are best run with --attn flex.
    "gpt2": dict(
        vocab_size=50304, n_layer=12, model_dim=768, n_head=6, tie_embed=False, logit_softcap=15.0,
        stage_durations=[0.36, 0.31, 0.33], stage_seq_lens=[1024, 2048, 2048],
        stage_batch_tokens=[131072, 262144, 393216], stage_lr_mults=[1.0, 1.0, 1.0],
        stage_windows=[(1024, 1024), (2048, 2048), (2048, 2048)], num_steps=1450, extension_steps=40,
        cooldown_frac=0.5, val_every=250, val_tokens=262144, log_every=25, micro_batch_tokens=32768,
        muon_lr=0.05, embed_lr=0.3, head_lr=0.008, dataset="shards", bos_id=50256,
    ),
}


# ---------------------------------------------------------------------------------------------
# parsing helpers (each raises ConfigError naming the flag)


def _eg(flag, v):
    return f"{flag}={v}" if flag.startswith("TRAINER_") else f"{flag} {v}"


def _flt(flag, s):
    try:
        v = float(s)
    except ValueError:
        raise ConfigError(f"{flag}: {s!r} is not a number", f"give a number, e.g. {_eg(flag, 0.5)}")
    if not math.isfinite(v):
        raise ConfigError(f"{flag}: {s!r} is not finite", "give a finite number")
    return v


def _int(flag, s):
    try:
        return int(str(s).replace("_", ""))
    except ValueError:
        raise ConfigError(f"{flag}: {s!r} is not an integer", f"give a whole number, e.g. {_eg(flag, 100)}")


def _bool(flag, s):
    t = str(s).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{flag}: {s!r} is not a boolean", "give 1 or 0")


def _list(flag, s, conv):
    parts = [p.strip() for p in str(s).split(",")]
    if not parts or any(p == "" for p in parts):
        raise ConfigError(f"{flag}: {s!r} has an empty entry", "give comma separated values, e.g. 0.4,0.3,0.3")
    return [conv(flag, p) for p in parts]


def _window(flag, s):
    a, _, b = s.partition("/")
    w_short = _int(flag, a)
    w_long = _int(flag, b) if b else w_short
    return (w_short, w_long)


# flag name -> (Config field, converter, help)
OPTIONS: dict[str, tuple] = {
    "preset": ("preset", None, "model size and default schedule: tiny | small | gpt2"),
    "stage-durations": ("stage_durations", lambda f, s: _list(f, s, _flt), "fraction of the scheduled steps per stage, sum 1"),
    "stage-seq-lens": ("stage_seq_lens", lambda f, s: _list(f, s, _int), "sequence length per stage"),
    "stage-batch-tokens": ("stage_batch_tokens", lambda f, s: _list(f, s, _int), "tokens per step (all ranks) per stage"),
    "stage-lr-mults": ("stage_lr_mults", lambda f, s: _list(f, s, _flt), "learning-rate multiplier per stage"),
    "stage-windows": ("stage_windows", lambda f, s: _list(f, s, _window), "attention window per stage: W or SHORT/LONG"),
    "num-steps": ("num_steps", _int, "scheduled steps (the stages divide these)"),
    "extension-steps": ("extension_steps", _int, "steps after the schedule, last stage at the final LR"),
    "cooldown-frac": ("cooldown_frac", _flt, "fraction of the scheduled steps of linear LR decay at the end"),
    "final-lr-frac": ("final_lr_frac", _flt, "LR at the end of the cooldown, as a fraction"),
    "val-every": ("val_every", _int, "validate every K steps (0: only at the end)"),
    "val-tokens": ("val_tokens", _int, "validation tokens"),
    "val-seq-len": ("val_seq_len", _int, "validation sequence length (0: the last stage's)"),
    "log-every": ("log_every", _int, "train-loss line every K steps"),
    "early-exit-at": ("early_exit_at", _flt, "stop as soon as val_loss <= X (0: off)"),
    "max-steps": ("max_steps", _int, "run length in steps (0: num-steps + extension-steps)"),
    "seed": ("seed", _int, "random seed"),
    "data-dir": ("data_dir", None, "data directory (default $HOME/.cache/speedrun-orch/data)"),
    "dataset": ("dataset", None, "stdlib-bytes (built offline automatically) | shards (.bin files)"),
    "train-files": ("train_files", None, "glob of train shards (relative to --data-dir)"),
    "val-files": ("val_files", None, "glob of val shards (relative to --data-dir)"),
    "bos-id": ("bos_id", _int, "document-start token id"),
    "align-bos": ("align_bos", _bool, "start sequences at document starts (1/0)"),
    "device": ("device", None, "auto | cpu | cuda"),
    "threads": ("threads", _int, "torch CPU threads (0: default)"),
    "compile": ("compile", None, "torch.compile: auto (cuda only) | 1 | 0"),
    "attn": ("attn", None, "attention: auto (=sdpa) | sdpa | flex | varlen (flex, varlen: cuda; documents apart)"),
    "kernels": ("kernels", None, "torch | triton (fused kernels from kernels/, cuda)"),
    "ce-kernel": ("ce_kernel", None, "auto | triton | torch: cross-entropy over the head's logits (auto: triton on cuda)"),
    "warmup-steps": ("warmup_steps", _int, "untimed compile warm-up steps, state restored afterwards"),
    "dtype": ("dtype", None, "activations: auto | bf16 | fp32"),
    "micro-batch-tokens": ("micro_batch_tokens", _int, "tokens per rank per forward (gradient accumulation; 0: all)"),
    "fp8-head": ("fp8_head", _bool, "LM head matmul in FP8 (1/0): e4m3 x and W, e5m2 gradient; emulated on CPU"),
    "sdpa-backend": ("sdpa_backend", None, "with --attn sdpa: auto | flash | cudnn | efficient | math"),
    "init-on-device": ("init_on_device", _bool, "build and initialise the model on its device (1), or on the CPU and "
                       "then move it (0: the initial weights do not depend on the GPU's random generator)"),
    "vocab-size": ("vocab_size", _int, "embedding rows (>= the data's largest token id + 1)"),
    "n-layer": ("n_layer", _int, "transformer blocks"),
    "model-dim": ("model_dim", _int, "residual width"),
    "n-head": ("n_head", _int, "attention heads"),
    "mlp-mult": ("mlp_mult", _int, "MLP hidden width / model width"),
    "tie-embed": ("tie_embed", _bool, "share the embedding with the output head (1/0)"),
    "logit-softcap": ("logit_softcap", _flt, "logits = c*tanh(z/c) (0: off)"),
    "rope-base": ("rope_base", _flt, "rotary base"),
    "muon-lr": ("muon_lr", _flt, "Muon learning rate (hidden matrices)"),
    "muon-momentum": ("muon_momentum", _flt, "Muon Nesterov momentum"),
    "muon-wd": ("muon_wd", _flt, "Muon decoupled weight decay"),
    "ns-steps": ("ns_steps", _int, "Polar Express iterations (1..5)"),
    "embed-lr": ("embed_lr", _flt, "Adam learning rate of the embedding"),
    "head-lr": ("head_lr", _flt, "Adam learning rate of the output head"),
    "scalar-lr": ("scalar_lr", _flt, "Adam learning rate of scalar parameters"),
    "adam-beta1": ("adam_beta1", _flt, "Adam beta1"),
    "adam-beta2": ("adam_beta2", _flt, "Adam beta2"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2, as docs/contracts.md fixes
        raise ConfigError(message, "see python -m trainer --help")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="trainer",
        description="Speedrun GPT trainer with a staged schedule. Every flag --x-y is also the "
        "environment variable TRAINER_X_Y; the flag wins.",
        allow_abbrev=False,
    )
    for flag, (_, _, help_) in OPTIONS.items():
        p.add_argument("--" + flag, dest=flag.replace("-", "_"), default=None, metavar="V", help=help_)
    return p


def env_name(flag: str) -> str:
    return "TRAINER_" + flag.upper().replace("-", "_")


def parse_config(argv=None, environ=None) -> Config:
    """Flags > TRAINER_* env > preset > dataclass defaults; then validate."""
    environ = os.environ if environ is None else environ
    argv = list(sys.argv[1:] if argv is None else argv)
    # every option takes one value: glue "--flag -0.5,..." so argparse does not read -0.5 as a flag
    glued, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "=" not in a and a[2:] in OPTIONS and i + 1 < len(argv) \
                and not (argv[i + 1].startswith("--") and argv[i + 1][2:].split("=")[0] in OPTIONS):
            glued.append(f"{a}={argv[i + 1]}")
            i += 2
        else:
            glued.append(a)
            i += 1
    args = vars(build_parser().parse_args(glued))
    raw: dict[str, tuple[str, str]] = {}  # flag -> (source, string value)
    for flag in OPTIONS:
        v = args[flag.replace("-", "_")]
        if v is not None:
            raw[flag] = ("--" + flag, v)
        elif environ.get(env_name(flag), "") != "":
            raw[flag] = (env_name(flag), environ[env_name(flag)])

    preset = raw.pop("preset", (None, "tiny"))[1].strip()
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}", "use --preset tiny, small or gpt2")
    cfg = Config(preset=preset, **PRESETS[preset])
    for flag, (src, s) in raw.items():
        name, conv, _ = OPTIONS[flag]
        setattr(cfg, name, conv(src, s) if conv else str(s).strip())
    if not cfg.data_dir:
        cfg.data_dir = os.path.join(os.path.expanduser("~"), ".cache", "speedrun-orch", "data")
    validate(cfg, world_size=int(environ.get("WORLD_SIZE", "1") or 1))
    return cfg


def validate(cfg: Config, world_size: int = 1) -> None:
    n = len(cfg.stage_durations)
    for name in ("stage_seq_lens", "stage_batch_tokens", "stage_lr_mults", "stage_windows"):
        if len(getattr(cfg, name)) != n:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} has {len(getattr(cfg, name))} entries but --stage-durations has {n}",
                "give one value per stage",
            )
    if any(f < 0 for f in cfg.stage_durations):
        raise ConfigError(f"--stage-durations {cfg.stage_durations} has a negative fraction", "use fractions >= 0")
    if abs(sum(cfg.stage_durations) - 1.0) > 1e-6:
        raise ConfigError(
            f"--stage-durations sum to {sum(cfg.stage_durations):.6g}, not 1",
            "make the fractions add up to 1, e.g. 0.36,0.31,0.33",
        )
    for i, st in enumerate(cfg.stages):
        if st.seq_len <= 0 or st.batch_tokens <= 0:
            raise ConfigError(f"stage {i + 1}: sequence length and batch tokens must be > 0", "give positive values")
        if st.batch_tokens % (world_size * st.seq_len) != 0:
            raise ConfigError(
                f"stage {i + 1}: batch tokens {st.batch_tokens} are not divisible by world size x sequence "
                f"length = {world_size} x {st.seq_len}",
                f"use a multiple of {world_size * st.seq_len} in --stage-batch-tokens",
            )
        if st.lr_mult < 0:
            raise ConfigError(f"stage {i + 1}: negative LR multiplier {st.lr_mult}", "use --stage-lr-mults >= 0")
        if st.window_short <= 0 or st.window_long <= 0:
            raise ConfigError(f"stage {i + 1}: attention windows must be > 0", "give positive --stage-windows")
    checks = [
        (cfg.num_steps >= 1, f"--num-steps {cfg.num_steps} must be >= 1", "give a positive step count"),
        (cfg.extension_steps >= 0, "--extension-steps must be >= 0", "give 0 or more"),
        (0 <= cfg.cooldown_frac <= 1, f"--cooldown-frac {cfg.cooldown_frac} outside [0, 1]", "give a fraction"),
        (0 <= cfg.final_lr_frac <= 1, f"--final-lr-frac {cfg.final_lr_frac} outside [0, 1]", "give a fraction"),
        (cfg.max_steps >= 0, "--max-steps must be >= 0", "give 0 (off) or a step count"),
        (cfg.val_every >= 0, "--val-every must be >= 0", "give 0 (only at the end) or a step count"),
        (cfg.val_tokens > 0, "--val-tokens must be > 0", "give a positive token count"),
        (cfg.val_seq_len >= 0, "--val-seq-len must be >= 0", "give 0 or a length"),
        (cfg.log_every >= 1, "--log-every must be >= 1", "give a positive step count"),
        (cfg.early_exit_at >= 0, "--early-exit-at must be >= 0", "give 0 (off) or a loss"),
        (cfg.device in ("auto", "cpu", "cuda"), f"--device {cfg.device!r} unknown", "use auto, cpu or cuda"),
        (cfg.compile in ("auto", "0", "1"), f"--compile {cfg.compile!r} unknown", "use auto, 1 or 0"),
        (cfg.attn in ("auto", "flex", "sdpa", "varlen"), f"--attn {cfg.attn!r} unknown",
         "use auto, flex, sdpa or varlen"),
        (cfg.kernels in ("torch", "triton"), f"--kernels {cfg.kernels!r} unknown", "use torch or triton"),
        (cfg.ce_kernel in ("auto", "triton", "torch"), f"--ce-kernel {cfg.ce_kernel!r} unknown",
         "use auto, triton or torch"),
        (cfg.dtype in ("auto", "bf16", "fp32"), f"--dtype {cfg.dtype!r} unknown", "use auto, bf16 or fp32"),
        (cfg.dataset in ("stdlib-bytes", "shards"), f"--dataset {cfg.dataset!r} unknown", "use stdlib-bytes or shards"),
        (cfg.n_layer >= 1 and cfg.model_dim >= 1 and cfg.n_head >= 1, "model sizes must be >= 1", "give positive sizes"),
        (cfg.model_dim % cfg.n_head == 0 and (cfg.model_dim // cfg.n_head) % 2 == 0,
         f"--model-dim {cfg.model_dim} is not divisible by --n-head {cfg.n_head} into even head sizes",
         "pick sizes with an even head dimension"),
        (cfg.vocab_size >= 2, "--vocab-size must be >= 2", "give the tokenizer's vocabulary size"),
        (0 <= cfg.bos_id < cfg.vocab_size, f"--bos-id {cfg.bos_id} outside the vocabulary", "give a valid token id"),
        (1 <= cfg.ns_steps <= 5, f"--ns-steps {cfg.ns_steps} outside 1..5", "give 1 to 5"),
        (cfg.threads >= 0, "--threads must be >= 0", "give 0 (default) or a count"),
        (cfg.warmup_steps >= 0, "--warmup-steps must be >= 0", "give 0 or a count"),
        (cfg.logit_softcap >= 0, "--logit-softcap must be >= 0", "give 0 (off) or a cap"),
        (cfg.muon_lr >= 0 and cfg.embed_lr >= 0 and cfg.head_lr >= 0 and cfg.scalar_lr >= 0,
         "learning rates must be >= 0", "give non-negative learning rates"),
        (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1 and 0 <= cfg.muon_momentum < 1,
         "betas / momentum must lie in [0, 1)", "give values like 0.9"),
        (cfg.micro_batch_tokens >= 0, "--micro-batch-tokens must be >= 0", "give 0 (off) or a token count"),
        (cfg.sdpa_backend in SDPA_BACKENDS, f"--sdpa-backend {cfg.sdpa_backend!r} unknown",
         "use " + ", ".join(SDPA_BACKENDS)),
        (cfg.sdpa_backend == "auto" or cfg.attn in ("auto", "sdpa"),
         f"--sdpa-backend {cfg.sdpa_backend} applies to --attn sdpa",
         "use --attn sdpa or drop --sdpa-backend"),
        (not cfg.fp8_head or (cfg.model_dim % 16 == 0 and cfg.vocab_size % 16 == 0),
         f"--fp8-head 1 needs --model-dim ({cfg.model_dim}) and --vocab-size ({cfg.vocab_size}) divisible by 16",
         "round them up to multiples of 16 or use --fp8-head 0"),
        (not cfg.fp8_head or cfg.kernels == "torch",
         "--fp8-head 1 with --kernels triton: the fused cross-entropy kernel computes the head itself",
         "use one of --fp8-head 1 and --kernels triton"),
    ]
    for ok, what, fix in checks:
        if not ok:
            raise ConfigError(what, fix)
