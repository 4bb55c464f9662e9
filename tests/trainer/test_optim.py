import torch

from trainer.optim import Muon, orthogonalize


def test_orthogonalize_singular_values_near_one():
    torch.manual_seed(0)
    for m, n in [(64, 64), (32, 128), (128, 32)]:
        k = min(m, n)
        U, _ = torch.linalg.qr(torch.randn(m, k))
        V, _ = torch.linalg.qr(torch.randn(n, k))
        G = U @ torch.diag(torch.logspace(-2, 0, k)) @ V.T  # condition number 100
        X = orthogonalize(G)
        s = torch.linalg.svdvals(X)
        assert s.min() > 0.8 and s.max() < 1.2, ((m, n), s.min(), s.max())
            # same singular vectors as U V^T: X is close to the polar factor
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        assert torch.nn.functional.cosine_similarity((U @ Vh).flatten(), X.flatten(), dim=0) > 0.95


def test_orthogonalize_batched():
    G = torch.randn(3, 48, 96)
    X = orthogonalize(G)
    for i in range(3):
        torch.testing.assert_close(X[i], orthogonalize(G[i]))
        s = torch.linalg.svdvals(X[i])
        assert s.min() > 0.6 and s.max() < 1.25


def test_muon_step_orthogonal_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(32, 64))
    opt = Muon([w], lr=0.1, momentum=0.0)
    w.grad = torch.randn(32, 64)
    opt.step()
    s = torch.linalg.svdvals(w.detach() / -0.1)
    assert s.min() > 0.6 and s.max() < 1.25
    # chunked QKV: each block is orthogonal on its own
    q = torch.nn.Parameter(torch.zeros(96, 32))
    q.muon_chunks = 3
    opt = Muon([q], lr=1.0, momentum=0.0)
    q.grad = torch.randn(96, 32) * torch.tensor([1.0] * 32 + [100.0] * 32 + [0.01] * 32)[:, None]
    opt.step()
    for blk in q.detach().view(3, 32, 32):
        s = torch.linalg.svdvals(-blk)
        assert s.min() > 0.6 and s.max() < 1.25


def _worker(rank, world, store, out):
    import torch.distributed as dist

    # a file store, not a port: a port found free and closed again can be taken by another test's server (sshd,
    # PostgreSQL, Ray) before rank 0 binds it, which failed this test now and then in whole-suite runs
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(16, 24)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(8, 8))]
    opt = Muon(ps, lr=0.1, rank=rank, world_size=world)
    for step in range(3):
        for i, p in enumerate(ps):
            p.grad = torch.sin(torch.arange(p.numel(), dtype=torch.float32).view_as(p) * (i + 1 + step))
        opt.step()
    torch.save([p.detach() for p in ps], f"{out}.{rank}")
    dist.barrier()  # both ranks done before teardown (gloo can abort otherwise)
    dist.destroy_process_group()


def test_muon_two_ranks_matches_one(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "w")
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(16, 24)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(8, 8))]
    opt = Muon(ps, lr=0.1)
    for step in range(3):
        for i, p in enumerate(ps):
            p.grad = torch.sin(torch.arange(p.numel(), dtype=torch.float32).view_as(p) * (i + 1 + step))
        opt.step()
    for r in range(2):
        got = torch.load(f"{out}.{r}")
        for a, b in zip(got, ps):
            torch.testing.assert_close(a, b.detach())
