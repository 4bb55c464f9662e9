"""Probe which FlexAttention configurations compile and run on this GPU (each case in its own process,
since a CUDA fault poisons the process). Prints one line per case: OK with fwd+bwd ms, or the error.

usage: python bench/trainer_flex_probe.py [--cases all|name,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CASES = {
    # name: (B, H, T, D, window, docs, kernel_options)
    "d128_causal": (16, 6, 2048, 128, 2048, False, None),
    "d128_docs": (16, 6, 2048, 128, 2048, True, None),
    "d128_window": (16, 6, 2048, 128, 768, False, None),
    "d128_docs_window_blk64": (16, 6, 2048, 128, 768, True, {"BLOCK_M": 64, "BLOCK_N": 64}),
    "d64_docs_window": (16, 12, 2048, 64, 768, True, None),
    "d128_docs_window": (16, 6, 2048, 128, 768, True, None),
    # as the trainer calls it: q, k, v transposed views of (B, T, H, D), under bf16 autocast
    "d128_strided": (16, 6, 2048, 128, 2048, True, "strided"),
    "d128_autocast": (16, 6, 2048, 128, 2048, True, "autocast"),
    "d128_strided_autocast": (16, 6, 2048, 128, 2048, True, "strided+autocast"),
}


def one(name):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, T, D, W, use_docs, kopts = CASES[name]
    mode = kopts if isinstance(kopts, str) else ""
    kopts = None if isinstance(kopts, str) else kopts
    torch.manual_seed(0)
    idx = torch.randint(0, 50000, (B, T), device="cuda")
    idx[:, ::300] = 50256

    @torch.compile(dynamic=False)
    def f(q, k, v, idx):
        docs = (idx == 50256).cumsum(1)

        def mm(b, h, qi, kv):
            m = (qi >= kv) & (qi - kv < W)
            return m & (docs[b, qi] == docs[b, kv]) if use_docs else m

        bm = create_block_mask(mm, B, None, T, T, device=idx.device)
        return flex_attention(q, k, v, block_mask=bm, kernel_options=kopts)

    if "strided" in mode:
        base = torch.randn(B, T, 3, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)

        def qkv():
            return [t.transpose(1, 2) for t in base.unbind(2)]
    else:
        qs = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]

        def qkv():
            return qs

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled="autocast" in mode):
            out = f(*qkv(), idx)
        out.float().sum().backward()

    t0 = time.time()
    step()
    torch.cuda.synchronize()
    compile_s = time.time() - t0
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    print(f"OK {name}: compile {compile_s:.1f}s, fwd+bwd {(time.perf_counter() - t0) / 5 * 1000:.2f} ms", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default="all")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return one(a.one)
    names = list(CASES) if a.cases == "all" else a.cases.split(",")
    for n in names:
        try:
            r = subprocess.run([sys.executable, __file__, "--one", n], capture_output=True, text=True, timeout=180)
            out = r.stdout.strip() or f"FAIL {n}: rc={r.returncode} " + " | ".join(
                l for l in r.stderr.strip().splitlines()[-3:])
        except subprocess.TimeoutExpired:
            out = f"FAIL {n}: timeout"
        print(out, flush=True)


if __name__ == "__main__":
    main()
