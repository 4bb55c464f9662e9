"""GPU checks (skipped without CUDA): bf16 + torch.compile + FlexAttention on a small model,
and the fused kernels path. Throughput numbers come from bench/trainer_throughput.py instead."""

import pytest
import torch

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("extra", [["--compile", "1", "--attn", "flex"], ["--compile", "0", "--attn", "sdpa"],
                                   ["--compile", "1", "--attn", "flex", "--kernels", "triton"],
                                   ["--compile", "1", "--attn", "varlen"]],
                         ids=["flex", "sdpa-eager", "flex-triton", "varlen"])
def test_gpu_tiny_trains(run_trainer, extra):
    p = run_trainer("--device", "cuda", "--num-steps", "60", "--stage-windows", "16/32,32/64,64/128",
                    "--stage-batch-tokens", "1024,2048,4096", *extra, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    final = p.metrics[-1]
    vals = [m["val_loss"] for m in p.metrics if m["event"] == "val"]
    assert final["exit_reason"] == "completed" and final["gpu_name"]
    assert vals[-1] < vals[0] - 1.0
    assert final["peak_memory_mib"] > 0


@needs_cuda
@pytest.mark.parametrize("kind", ["flex", "varlen"])
def test_matches_sdpa_without_documents(kind):
    """Rows with no document start inside: flex's masks and varlen's segments are the rows' causal windows, so each
    equals SDPA. varlen runs under bf16 autocast (FlashAttention takes no fp32), hence its looser tolerance."""
    from trainer.config import parse_config
    from trainer.model import GPT

    cfg = parse_config(["--bos-id", "255"], {})
    torch.manual_seed(0)
    a = GPT(cfg, 128, "sdpa").cuda()
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(std=0.05)
    b = GPT(cfg, 128, kind).cuda()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 250, (2, 128), device="cuda")
    bf16 = kind == "varlen"
    tol = 2e-2 if bf16 else 2e-3
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
        for windows in ((128, 128), (32, 64)):
            torch.testing.assert_close(a(idx, idx, windows), b(idx, idx, windows, b.block_masks(idx, windows)),
                                       atol=tol, rtol=tol)
