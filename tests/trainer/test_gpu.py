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
def test_flex_matches_sdpa_without_documents():
    from trainer.config import parse_config
    from trainer.model import GPT

    cfg = parse_config(["--bos-id", "255"], {})
    torch.manual_seed(0)
    a = GPT(cfg, 128, "sdpa").cuda()
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(std=0.05)
    b = GPT(cfg, 128, "flex").cuda()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 250, (2, 128), device="cuda")
    with torch.no_grad():
        la = a(idx, idx, (128, 128))
        lb = b(idx, idx, (128, 128), b.block_masks(idx, (128, 128)))
        lw_a = a(idx, idx, (32, 64))
        lw_b = b(idx, idx, (32, 64), b.block_masks(idx, (32, 64)))
    torch.testing.assert_close(la, lb, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lw_a, lw_b, atol=2e-3, rtol=2e-3)


@needs_cuda
def test_varlen_matches_sdpa_without_documents():
    """Rows with no document start inside: varlen's segments are the rows, so it equals SDPA (bf16: FlashAttention
    takes no fp32)."""
    from trainer.config import parse_config
    from trainer.model import GPT

    cfg = parse_config(["--bos-id", "255"], {})
    torch.manual_seed(0)
    a = GPT(cfg, 128, "sdpa").cuda()
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(std=0.05)
    b = GPT(cfg, 128, "varlen").cuda()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 250, (2, 128), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        for windows in ((128, 128), (32, 64)):
            torch.testing.assert_close(a(idx, idx, windows), b(idx, idx, windows, b.block_masks(idx, windows)),
                                       atol=2e-2, rtol=2e-2)
