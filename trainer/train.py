"""The training loop: ``python -m trainer`` (or ``torchrun --nproc_per_node=N -m trainer``).

1. parse flags / TRAINER_* env and validate (exit 2 on bad input, before torch is imported)
2. find (or build) the shards and check them (exit 2 when missing or corrupt)
3. build the model and optimizers; on CUDA compile and warm up every stage's shapes untimed,
   then restore the initial state
4. train through the stages; validate every --val-every steps and at the end (untimed)
5. print the final ``@@metrics`` object; exit 0 (completed / early_exit), 3 (diverged), 1 (error)
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import platform
import sys
import time
import traceback

from trainer.config import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_ERROR, ConfigError, parse_config

_RANK0 = int(os.environ.get("RANK", "0") or 0) == 0


def emit(obj: dict, human: str | None = None) -> None:
    """Print (rank 0 only) an optional human line and the @@metrics JSON line."""
    if not _RANK0:
        return
    if human:
        print(human, flush=True)
    print("@@metrics " + json.dumps(obj, separators=(", ", ": ")), flush=True)


def _process_start() -> float:
    """When this process started (epoch seconds). On Linux from its start in clock ticks since boot against the boot
    clock (10 ms steps; psutil adds that to the boot time, which /proc/stat gives in whole seconds: up to 1 s off);
    elsewhere from psutil; now where neither can tell."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime (the name may hold spaces)
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()


def compile_cache_counts() -> dict:
    """torch.compile's cache outcomes in this process (dynamo's counters: Inductor's FX graph cache and AOTAutograd's
    cache, hit / miss / bypass): says whether a warm trial compiled from its caches or again."""
    if "torch._dynamo" not in sys.modules:
        return {}
    from torch._dynamo.utils import counters

    out = {}
    for group in ("inductor", "aot_autograd"):
        for name, count in counters.get(group, {}).items():
            if "cache" in name and ("hit" in name or "miss" in name or "bypass" in name):
                out[name] = count
    return out


def versions() -> dict:
    import numpy
    import torch

    v = {"torch": torch.__version__, "python": platform.python_version(), "numpy": numpy.__version__,
         "cuda": torch.version.cuda}
    try:
        import triton

        v["triton"] = triton.__version__
    except Exception:
        pass
    return v


def _has_varlen() -> bool:
    """Whether this torch has FlashAttention's variable-length kernel (`--attn varlen`)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# schedule


class Schedule:
    """Which stage a step belongs to and its learning-rate multiplier.

    The stages divide the first num_steps steps by their fractions; later steps (extension steps and
    anything up to --max-steps) stay in the last stage. The LR multiplier is the stage's times a linear
    cooldown from 1 to final_lr_frac over the last cooldown_frac of the scheduled steps.
    """

    def __init__(self, cfg):
        self.cfg, self.stages = cfg, cfg.stages
        acc, self.ends = 0.0, []
        for st in self.stages:
            acc += st.frac
            self.ends.append(round(acc * cfg.num_steps))

    def stage_index(self, step: int) -> int:  # step: 0-based index of the step being taken
        for i, end in enumerate(self.ends):
            if step < end:
                return i
        return len(self.stages) - 1

    def lr_mult(self, step: int) -> float:
        c = self.cfg
        p = min(step / c.num_steps, 1.0)
        m = 1.0
        if c.cooldown_frac > 0 and p > 1 - c.cooldown_frac:
            w = (1 - p) / c.cooldown_frac
            m = w + (1 - w) * c.final_lr_frac
        return m * self.stages[self.stage_index(step)].lr_mult


# ---------------------------------------------------------------------------------------------


def bad_input(e: ConfigError) -> int:
    if _RANK0:  # one line, from rank 0 only
        print(f"trainer: error: {e}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def main(argv=None) -> int:
    try:
        cfg = parse_config(argv)
    except ConfigError as e:
        return bad_input(e)
    from trainer.data import resolve_files

    try:
        train_files, val_files = resolve_files(cfg)
    except ConfigError as e:
        return bad_input(e)
    return Run(cfg, train_files, val_files).run()


class Run:
    def __init__(self, cfg, train_files, val_files):
        self.cfg, self.train_files, self.val_files = cfg, train_files, val_files
        self.step = 0
        self.train_time_ms = 0.0
        self.tokens = 0
        self.val_loss = None
        self.total_steps = cfg.total_steps
        self._prefetched: dict = {}  # step -> its batch (host rows, rows already on the device)
        # seconds from the process's start to its first timed step, by phase (the final @@metrics' startup_s)
        self.startup: dict[str, float] = {"process": round(time.time() - _process_start(), 2)}
        self._lap_at = time.perf_counter()

    def _lap(self) -> float:
        now = time.perf_counter()
        lap, self._lap_at = now - self._lap_at, now
        return round(lap, 2)

    # -- setup -------------------------------------------------------------------------------
    def setup(self):
        import numpy as np
        import torch
        import torch.distributed as dist

        from trainer import data, fp8, model, optim

        cfg = self.cfg
        self.torch, self.np, self.dist = torch, np, dist
        self.startup["import"] = self._lap()
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        if cfg.device == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            dev = cfg.device
        if dev == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda but no CUDA GPU is visible", "use --device cpu or auto")
        if dev == "cuda":
            torch.cuda.set_device(local_rank)
            self.device = torch.device("cuda", local_rank)
            torch.empty(1, device=self.device)  # the CUDA context now (lazy otherwise): startup_s "device" holds it
            torch.cuda.synchronize()
        else:
            self.device = torch.device("cpu")
        self.is_cuda = dev == "cuda"
        if self.world > 1:
            dist.init_process_group("nccl" if self.is_cuda else "gloo", device_id=self.device if self.is_cuda else None)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        if self.is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.is_cuda)
        # auto = sdpa: the path verified at GPT-2 size on an H100 (docs/trainer.md); flex is opt-in
        self.attn_kind = cfg.attn if cfg.attn != "auto" else "sdpa"
        if self.attn_kind in ("flex", "varlen") and not self.is_cuda:
            raise ConfigError(f"--attn {self.attn_kind} needs CUDA here", "use --attn sdpa on CPU")
        if self.attn_kind == "varlen" and not _has_varlen():
            raise ConfigError(f"--attn varlen needs torch >= 2.10 (torch.nn.attention.varlen), not {torch.__version__}",
                              "use --attn flex or sdpa, or a newer torch")
        if cfg.sdpa_backend in ("cudnn", "efficient") and not self.is_cuda:
            raise ConfigError(f"--sdpa-backend {cfg.sdpa_backend} needs CUDA", "use auto, flash or math on CPU")
        if cfg.fp8_head and not fp8.fp8_supported(self.device):
            raise ConfigError("--fp8-head 1 needs a GPU with FP8 matmuls (compute capability 8.9+: Ada, Hopper)",
                              "use --fp8-head 0 on this GPU")
        if self.attn_kind == "varlen" and not self.use_bf16:
            raise ConfigError("--attn varlen runs in bf16 (FlashAttention takes no fp32)", "drop --dtype fp32")
        self.compile = cfg.compile == "1" or (cfg.compile == "auto" and self.is_cuda)
        self.schedule = Schedule(cfg)

        # data
        self.startup["device"] = self._lap()
        self.loader = data.BatchLoader(self.train_files, cfg.bos_id, cfg.align_bos, self.rank, self.world)
        self.val_seq = cfg.val_seq_len or cfg.stages[-1].seq_len
        vr = data.val_rows(self.val_files, cfg.val_tokens, self.val_seq, self.rank, self.world)
        top = int(max(vr.max(), int(np.asarray(self.loader.tokens[: 1 << 24]).max())))
        if top >= cfg.vocab_size:
            raise ConfigError(f"the data holds token id {top}, outside --vocab-size {cfg.vocab_size}",
                              "use the preset that matches the data (tiny: bytes, small/gpt2: GPT-2 tokens)")
        if cfg.align_bos and not (np.asarray(self.loader.tokens[: 1 << 24]) == cfg.bos_id).any():
            raise ConfigError(f"the train shards hold no document-start token {cfg.bos_id}",
                              "use the preset that matches the data, or give --bos-id / --align-bos 0")
        self.val = torch.from_numpy(vr)

        # model and optimizers
        self.startup["data"] = self._lap()
        max_seq = max([st.seq_len for st in cfg.stages] + [self.val_seq])
        # built on the GPU, a 162M-parameter model initialises in a fraction of the seconds the CPU takes
        with torch.device(self.device) if cfg.init_on_device else contextlib.nullcontext():
            self.model = model.GPT(cfg, max_seq, self.attn_kind).to(self.device)
        self.n_params = model.count_params(self.model)
        self.sync()
        self.startup["model"] = self._lap()
        kern = self.model.kern
        xxt = getattr(kern, "xxt", None) if (kern is not None and self.is_cuda) else None
        self.opts = optim.build_optimizers(self.model, cfg, self.rank, self.world, xxt)
        self.sync()
        self.startup["optimizers"] = self._lap()
        self.fwd = torch.compile(self.model, dynamic=False) if self.compile else self.model
        self.flops_per_token = model.train_flops_per_token
        self.startup["compile"] = self._lap()

    def autocast(self):
        return self.torch.autocast(device_type=self.device.type, dtype=self.torch.bfloat16, enabled=self.use_bf16)

    def sync(self):
        if self.is_cuda:
            self.torch.cuda.synchronize()

    # -- one optimizer step ---------------------------------------------------------------
    def fetch(self, step: int):
        """`step`'s batch: its rows on the host (numpy) and on the device (pinned, copied without blocking)."""
        torch = self.torch
        st = self.schedule.stages[self.schedule.stage_index(step)]
        host = self.loader.next_batch(st.seq_len, st.batch_tokens)
        batch = torch.from_numpy(host)
        if self.is_cuda:
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return host, batch

    def train_step(self, step: int):
        """Forward and backward over the micro-batches, the gradient all-reduce, the optimizers. The next
        step's batch is built on the host while the GPU works (`_prefetched`): no idle gap between steps."""
        batch = self._prefetched.pop(step, None)
        if batch is None:
            batch = self.fetch(step)
        loss_sum = self.forward_backward(step, batch)
        if self.is_cuda and step + 1 < self.total_steps:
            self._prefetched = {step + 1: self.fetch(step + 1)}
        self.optimizer_step(step)
        st = self.schedule.stages[self.schedule.stage_index(step)]
        return loss_sum, st.batch_tokens, st.seq_len

    def forward_backward(self, step: int, fetched):
        cfg = self.cfg
        host, batch = fetched
        st = self.schedule.stages[self.schedule.stage_index(step)]
        windows = (min(st.window_short, st.seq_len), min(st.window_long, st.seq_len))
        n = batch.size(0)
        micro = n
        if cfg.micro_batch_tokens:  # largest divisor of n within the budget: equal shapes, one compile
            cap = max(1, cfg.micro_batch_tokens // st.seq_len)
            micro = max(k for k in range(1, min(n, cap) + 1) if n % k == 0)
        loss_sum = 0.0
        for i in range(0, n, micro):
            chunk = batch[i:i + micro]
            x, y = chunk[:, :-1], chunk[:, 1:]
            masks = self.model.block_masks(x, windows, host[i:i + micro, :-1])
            with self.autocast():
                loss = self.fwd(x, y, windows, masks)
            (loss * (x.size(0) / n)).backward()
            loss_sum = loss_sum + loss.detach() * (x.size(0) / n)
        return loss_sum

    def optimizer_step(self, step: int):
        if self.world > 1:
            handles = [self.dist.all_reduce(p.grad, op=self.dist.ReduceOp.AVG, async_op=True)
                       for p in self.model.parameters() if p.grad is not None]
            for h in handles:
                h.wait()
        mult = self.schedule.lr_mult(step)
        for opt in self.opts:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
            opt.step()
        self.model.zero_grad(set_to_none=True)

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> float:
        torch, cfg = self.torch, self.cfg
        st = cfg.stages[-1]
        windows = (min(st.window_short, self.val_seq), min(st.window_long, self.val_seq))
        per = cfg.micro_batch_tokens or (st.batch_tokens // self.world)
        if not self.is_cuda:
            per = max(per, 4096)  # CPU: fewer, larger forwards
        rows = max(1, per // self.val_seq)
        self.model.eval()
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        with torch.no_grad():
            for i in range(0, self.val.size(0), rows):
                chunk = self.val[i:i + rows].to(self.device, non_blocking=True)
                x, y = chunk[:, :-1], chunk[:, 1:]
                masks = self.model.block_masks(x, windows, self.val[i:i + rows, :-1].numpy())
                with self.autocast():
                    loss = self.fwd(x, y, windows, masks)
                total += loss.detach().double() * x.size(0)
        self.model.train()
        total /= self.val.size(0)
        if self.world > 1:
            self.dist.all_reduce(total, op=self.dist.ReduceOp.AVG)
        return float(total.item())

    # -- compile warm-up ------------------------------------------------------------------
    def warmup(self):
        """Run each distinct stage shape (and validation) a few steps untimed, then restore the state."""
        n = self.cfg.warmup_steps or (2 if self.compile else 0)
        if n == 0:
            return
        t0 = time.perf_counter()
        saved_model = copy.deepcopy(self.model.state_dict())
        saved_opts = [copy.deepcopy(o.state_dict()) for o in self.opts]
        saved_loader = self.loader.state()
        seen = set()
        for i, st in enumerate(self.schedule.stages):
            key = (st.seq_len, st.batch_tokens, st.window_short, st.window_long)
            if key in seen:
                continue
            seen.add(key)
            first = self.schedule.ends[i - 1] if i else 0
            for _ in range(n):
                self.train_step(first)
        self.validate()
        self.model.load_state_dict(saved_model)
        for o, s in zip(self.opts, saved_opts):
            o.load_state_dict(s)
        self.loader.restore(saved_loader)
        self._prefetched = {}
        self.model.zero_grad(set_to_none=True)
        self.sync()
        self.warmup_s = time.perf_counter() - t0

    # -- output ---------------------------------------------------------------------------
    def _avg(self):
        return round(self.train_time_ms / self.step, 2) if self.step else 0.0

    def log_val(self):
        t, avg = round(self.train_time_ms), self._avg()
        emit({"event": "val", "step": self.step, "total_steps": self.total_steps, "val_loss": round(self.val_loss, 4),
              "train_time_ms": t, "step_avg_ms": avg},
             f"step:{self.step}/{self.total_steps} val_loss:{self.val_loss:.4f} train_time:{t}ms step_avg:{avg}ms")

    def final(self, reason: str) -> None:
        peak = 0
        try:
            if self.is_cuda:
                peak = self.torch.cuda.max_memory_allocated(self.device) / 2**20
            else:
                import resource

                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        except Exception:
            pass
        vl = self.val_loss
        emit({"event": "final", "step": self.step, "total_steps": self.total_steps,
              "val_loss": round(vl, 4) if vl is not None and math.isfinite(vl) else None,
              "train_time_ms": round(self.train_time_ms), "step_avg_ms": self._avg(), "tokens": self.tokens,
              "peak_memory_mib": round(peak), "warmup_s": round(getattr(self, "warmup_s", 0.0), 1),
              "startup_s": self.startup, "compile_cache": compile_cache_counts(),
              "exit_reason": reason, "world_size": getattr(self, "world", 1),
              "gpu_name": self.torch.cuda.get_device_name(self.device) if getattr(self, "is_cuda", False) else None,
              "versions": versions()})

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self.setup()
        except ConfigError as e:
            return bad_input(e)
        try:
            return self._run()
        except Exception:
            traceback.print_exc()
            sys.stderr.flush()
            self.final("error")
            return EXIT_ERROR
        finally:
            if self.world > 1 and self.dist.is_initialized():
                try:  # every rank reaches here before any tears down (gloo aborts otherwise)
                    self.dist.barrier()
                except Exception:
                    pass
                self.dist.destroy_process_group()

    def _run(self) -> int:
        cfg, torch = self.cfg, self.torch
        gpu = torch.cuda.get_device_name(self.device) if self.is_cuda else None
        emit({"event": "start", "config": cfg.to_dict(), "n_params": self.n_params, "device": str(self.device),
              "gpu_name": gpu, "world_size": self.world, "attn": self.attn_kind, "compile": self.compile,
              "kernels": cfg.kernels if self.model.kern is not None else "torch",
              "train_files": self.train_files, "val_files": self.val_files,
              "flops_per_token": [self.flops_per_token(cfg, st.seq_len, (st.window_short, st.window_long))
                                for st in cfg.stages], "versions": versions()},
             f"trainer: preset {cfg.preset}, {self.n_params:,} parameters, device {self.device}"
             f"{' (' + gpu + ')' if gpu else ''}, world size {self.world}, {self.total_steps} steps")
        self.startup["start_line"] = self._lap()
        self.warmup()
        self.startup["warmup"] = self._lap()
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.val_loss = self.validate()
        self.log_val()
        self.startup["first_val"] = self._lap()
        check_every = cfg.log_every if self.is_cuda else 1  # a finite-loss check costs a sync on GPU
        # The clock is read only where the host waits for the GPU anyway (a loss check, a log line, a
        # validation): steps between readings are queued back to back, with no idle gap between them.
        self.sync()
        t0 = time.perf_counter()
        while self.step < self.total_steps:
            loss, batch_tokens, _ = self.train_step(self.step)
            self.step += 1
            self.tokens += batch_tokens
            log = self.step % cfg.log_every == 0 or self.step == self.total_steps
            last = self.step == self.total_steps
            val_due = last or bool(cfg.val_every and self.step % cfg.val_every == 0)
            if log or val_due or self.step % check_every == 0:
                loss_v = float(loss)  # syncs
                self.sync()
                now = time.perf_counter()
                self.train_time_ms += (now - t0) * 1000
                t0 = now
                if not math.isfinite(loss_v):
                    self.val_loss = float("nan")
                    if _RANK0:
                        print(f"step:{self.step}/{self.total_steps} train_loss:{loss_v} diverged", flush=True)
                    self.final("diverged")
                    return EXIT_DIVERGED
            if log:
                t, avg = round(self.train_time_ms), self._avg()
                emit({"event": "train", "step": self.step, "total_steps": self.total_steps,
                      "train_loss": round(loss_v, 4), "train_time_ms": t, "step_avg_ms": avg},
                     f"step:{self.step}/{self.total_steps} train_loss:{loss_v:.4f} train_time:{t}ms step_avg:{avg}ms")
            if val_due:
                self.val_loss = self.validate()
                self.log_val()
                if not math.isfinite(self.val_loss):
                    self.final("diverged")
                    return EXIT_DIVERGED
                if cfg.early_exit_at and self.val_loss <= cfg.early_exit_at and not last:
                    self.final("early_exit")
                    return 0
                self.sync()
                t0 = time.perf_counter()  # validation is not training time
        self.final("completed")
        return 0
