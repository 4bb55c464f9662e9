"""The tiny GPT compiled with --kernels triton on CUDA: one graph (fullgraph=True, the fused operators inside
it), and the same loss and gradients as the compiled --kernels torch model. Skipped without CUDA."""
import pytest
import torch

from _oracle import needs_cuda, rel

pytestmark = pytest.mark.gpu


def _loss_and_grads(model, idx, targets):
    compiled = torch.compile(model, dynamic=False, fullgraph=True)  # a graph break fails the test
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(idx, targets, (128, 128))
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@needs_cuda
def test_compiled_tiny_gpt_triton_matches_torch():
    from trainer.config import parse_config
    from trainer.model import GPT

    torch.manual_seed(0)
    ref = GPT(parse_config(["--kernels", "torch"], {}), 128, "sdpa").cuda()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(std=0.05)  # not the zero-initialised projections and head: every gradient non-zero
    fused = GPT(parse_config(["--kernels", "triton"], {}), 128, "sdpa").cuda()
    fused.load_state_dict(ref.state_dict())
    assert ref.kern is None and fused.kern is not None
    idx = torch.randint(0, 250, (4, 128), device="cuda")
    targets = torch.roll(idx, -1, dims=1)
    loss_ref, grads_ref = _loss_and_grads(ref, idx, targets)
    loss, grads = _loss_and_grads(fused, idx, targets)
    assert torch.isfinite(loss)
    assert rel(loss, loss_ref) < 1e-2, (loss.item(), loss_ref.item())
    assert rel(grads, grads_ref) < 3e-2, rel(grads, grads_ref)
