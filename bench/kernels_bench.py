"""Benchmark kernels/ on a CUDA GPU: each kernel vs PyTorch eager and torch.compile of its reference.

"ours" calls the kernel's operator eagerly; "ours compiled" calls it inside torch.compile(dynamic=False), as
the trainer compiles (inductor traces into the operator and launches the same Triton kernels from its code).

Usage (device machine):  python3 bench/kernels_bench.py --doc docs/kernels.md
Prints a markdown table and, with --doc, replaces the block between the bench markers in that file.
Timings: triton.testing.do_bench medians (CUDA events), after warm-up; torch.compile uses the default
mode. Floors: max(FLOPs / measured bf16 matmul peak, bytes / measured copy bandwidth), both measured
in the same run on the same GPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def bench(fn, warmup=25, rep=100):
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def measure_peaks():
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: a @ b, warmup=100, rep=300)
    tflops = 2 * n**3 / ms / 1e9
    del a, b
    src = torch.randn(2**29, device="cuda", dtype=torch.float32)  # 2 GiB
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), warmup=50, rep=200)
    tbs = 2 * src.numel() * 4 / ms / 1e9
    del src, dst
    return tflops, tbs


def peak_mem(fn):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def run_case(rows, name, shape, variants, flops, nbytes, peak_tflops, peak_tbs, mem=False, check=None):
    floor_ms = max(flops / peak_tflops / 1e9, nbytes / peak_tbs / 1e9)
    res = {}
    for vname, fn in variants.items():
        t0 = time.time()
        try:
            fn()  # compile / autotune outside the timing
            torch.cuda.synchronize()
            ms = bench(fn)
            gib = peak_mem(fn) if mem else None
            res[vname] = (ms, gib)
        except Exception as e:  # keep going: one failure must not lose the table
            traceback.print_exc()
            res[vname] = (float("nan"), None)
            print(f"{name} {vname}: {type(e).__name__}: {e}", flush=True)
        print(f"  {name:28s} {vname:8s} {res[vname][0]:9.3f} ms  ({time.time() - t0:.1f}s incl. warm-up)", flush=True)
    err = ""
    if check is not None:
        try:
            err = f"{check():.1e}"
        except Exception as e:
            err = f"err: {type(e).__name__}"
    rows.append((name, shape, res, floor_ms, err))


def fmt_table(rows, mem_cols):
    out = ["| case | shape | ours ms | ours compiled ms | eager ms | compile ms | x eager | x compile | floor ms | "
           "ours % of floor | " + ("peak GiB ours/eager/compile | " if mem_cols else "") + "rel diff vs eager |",
           "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if mem_cols else "") + "---|"]
    for name, shape, res, floor_ms, err in rows:
        o, oc, e, c = (res.get(k, (float("nan"), None)) for k in ("triton", "triton_compile", "eager", "compile"))
        line = (f"| {name} | {shape} | {o[0]:.3f} | {oc[0]:.3f} | {e[0]:.3f} | {c[0]:.3f} | {e[0] / o[0]:.2f} | "
                f"{c[0] / o[0]:.2f} | {floor_ms:.3f} | {100 * floor_ms / o[0]:.0f}% | ")
        if mem_cols:
            line += ("/".join("-" if r[1] is None else f"{r[1]:.1f}" for r in (o, e, c)) + " | ")
        line += f"{err} |"
        out.append(line)
    return "\n".join(out)


def ce_tune(x, w, t, cap, fwd_bwd):
    """Time the CE backward's pieces on one chunk, then whole fwd+bwd per backward setting; keep the best."""
    from kernels import _softcap_ce_triton as K
    from kernels import softcap_ce as S
    from kernels._common import direct_launches, dot_precision

    with direct_launches():  # the launchers are called outside the operators here
        return _ce_tune(K, S, dot_precision, x, w, t, cap, fwd_bwd)


def _ce_tune(K, S, dot_precision, x, w, t, cap, fwd_bwd):
    lines = []
    N, D = x.shape
    V = w.shape[0]
    Vp = (V + 63) // 64 * 64
    xd, wd = x.detach(), w.detach()
    prec = dot_precision(x.dtype)
    n_split = S._n_split(N, (V + 127) // 128, x.device)
    ms = bench(lambda: K.ce_forward_partials(xd, wd, t, cap, n_split, prec))
    lines.append(f"forward kernel (all {N} rows, {n_split} vocab slices): {ms:.3f} ms")
    rows = min(N, S.CONFIG["chunk_bytes"] // (Vp * 2))
    xc, tc = xd[:rows], t[:rows]
    lse = torch.randn(rows, device="cuda").abs() + 10
    g = torch.full((rows,), 1.0 / N, device="cuda")
    dz = torch.empty((rows, Vp), device="cuda", dtype=x.dtype)[:, :V]
    K.ce_dz(xc, wd, tc, lse, g, dz, cap, prec)
    dzr = torch.randn_like(dz) * 1e-4
    dz.copy_(dzr)
    dw32 = torch.zeros(V, D, device="cuda")
    parts = {
        "dz kernel": lambda: K.ce_dz(xc, wd, tc, lse, g, dz, cap, prec),
        "dx = dz @ W": lambda: dz @ wd,
        "dz^T @ x (bf16 out)": lambda: dz.t() @ xc,
        "dW32 += (dz^T @ x).float()": lambda: dw32.add_((dz.t() @ xc).float()),
        "addmm(dW32, dz^T, x, out_dtype=fp32)": lambda: torch.addmm(dw32, dz.t(), xc, out_dtype=torch.float32, out=dw32),
    }
    for name, fn in parts.items():
        try:
            fn()
            ms = bench(fn)
            lines.append(f"{name} ({rows} rows): {ms:.3f} ms, {2 * rows * V * D / ms / 1e9:.0f} TFLOP/s")
        except Exception as e:
            lines.append(f"{name}: {type(e).__name__}: {str(e)[:120]}")
    del dz, dzr, dw32
    best = None
    saved = dict(S.CONFIG)
    for mode, chunk in [("f32_add", 1024), ("f32_add", 4096), ("native", 1024), ("addmm_f32", 1024)]:
        S.CONFIG.update(dw_mode=mode, chunk_bytes=chunk * 2**20)
        try:
            fwd_bwd()
            ms = bench(fwd_bwd)
        except Exception as e:
            lines.append(f"fwd+bwd dw_mode={mode} chunk={chunk} MiB: {type(e).__name__}: {str(e)[:120]}")
            continue
        lines.append(f"fwd+bwd dw_mode={mode} chunk={chunk} MiB: {ms:.3f} ms")
        if best is None or ms < best[0]:
            best = (ms, mode, chunk)
    S.CONFIG.clear()
    S.CONFIG.update(saved)
    if best is not None:
        S.CONFIG.update(dw_mode=best[1], chunk_bytes=best[2] * 2**20)
        lines.append(f"the CE rows of the table use dw_mode={best[1]} chunk_bytes={best[2]} MiB (fastest of these)")
    for ln in lines:
        print("  ce: " + ln, flush=True)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doc", help="markdown file whose bench block is replaced with the results")
    ap.add_argument("--rows", type=int, default=16 * 2048, help="token rows for the CE and MLP cases")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    import triton

    import kernels

    torch.manual_seed(0)
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}; triton {triton.__version__}", flush=True)
    peak_tflops, peak_tbs = measure_peaks()
    print(f"measured: bf16 matmul {peak_tflops:.0f} TFLOP/s (8192^3), device copy {peak_tbs:.2f} TB/s", flush=True)
    comp = (lambda f: f) if args.skip_compile else (lambda f: torch.compile(f))
    comp_ours = (lambda f: f) if args.skip_compile else (lambda f: torch.compile(f, dynamic=False))
    bf = torch.bfloat16
    rows_ce, rows_mlp, rows_ns = [], [], []

    # ---------------------------------------------------------------- (a) soft-capped CE
    N, D, V, cap = args.rows, 768, 50257, 15.0
    x = (torch.randn(N, D, device="cuda") ).to(bf).requires_grad_()
    w = (torch.randn(V, D, device="cuda") * 0.05).to(bf).requires_grad_()
    t = torch.randint(0, V, (N,), device="cuda")
    ref = kernels.softcap_cross_entropy_reference
    ref_c = comp(ref)
    ours_c = comp_ours(kernels.softcap_cross_entropy)

    def ours_f():
        return kernels.softcap_cross_entropy(x, w, t, cap)

    def fb(f):
        return lambda: torch.autograd.grad(f(), [x, w])

    tune_lines = ce_tune(x, w, t, cap, fb(ours_f))
    variants = {"triton": fb(ours_f), "triton_compile": fb(lambda: ours_c(x, w, t, cap)),
                "eager": fb(lambda: ref(x, w, t, cap)), "compile": fb(lambda: ref_c(x, w, t, cap))}
    run_case(rows_ce, "softcap CE fwd+bwd", f"N={N} D={D} V={V} bf16", variants, 6 * N * V * D, 2 * (2 * N * D + 2 * V * D),
             peak_tflops, peak_tbs, mem=True, check=lambda: rel(ours_f(), ref(x, w, t, cap)))
    with torch.no_grad():
        variants = {"triton": ours_f, "triton_compile": lambda: ours_c(x, w, t, cap),
                    "eager": lambda: ref(x, w, t, cap), "compile": lambda: ref_c(x, w, t, cap)}
        run_case(rows_ce, "softcap CE fwd (no grad)", f"N={N} D={D} V={V} bf16", variants, 2 * N * V * D,
                 2 * (N * D + V * D), peak_tflops, peak_tbs, mem=True)
    del x, w, t
    torch.cuda.empty_cache()

    # ---------------------------------------------------------------- (b) relu^2 MLP up
    N, D, H = args.rows, 768, 3072
    x = torch.randn(N, D, device="cuda").to(bf).requires_grad_()
    w = (torch.randn(H, D, device="cuda") / D**0.5).to(bf).requires_grad_()
    dy = torch.randn(N, H, device="cuda").to(bf)
    refm = kernels.relu2_mlp_up_reference
    refm_c = comp(refm)
    oursm_c = comp_ours(kernels.relu2_mlp_up)
    variants = {"triton": lambda: kernels.relu2_mlp_up(x, w), "triton_compile": lambda: oursm_c(x, w),
                "eager": lambda: refm(x, w), "compile": lambda: refm_c(x, w)}
    with torch.no_grad():
        run_case(rows_mlp, "relu2 MLP up fwd", f"N={N} {D}->{H} bf16", variants, 2 * N * D * H,
                 2 * (N * D + H * D + N * H), peak_tflops, peak_tbs,
                 check=lambda: rel(kernels.relu2_mlp_up(x, w), refm(x, w)))

    def fbm(f):
        return lambda: torch.autograd.grad(f(), [x, w], dy)

    variants = {k: fbm(v) for k, v in variants.items()}
    run_case(rows_mlp, "relu2 MLP up fwd+bwd", f"N={N} {D}->{H} bf16", variants, 6 * N * D * H,
             2 * (2 * N * D + 2 * H * D + 3 * N * H), peak_tflops, peak_tbs)
    del x, w, dy
    torch.cuda.empty_cache()

    # ---------------------------------------------------------------- (c) X @ X.T (Newton-Schulz)
    refx = kernels.xxt_reference
    refx_c = comp(refx)
    oursx_c = comp_ours(kernels.xxt)
    for shape in [(768, 768), (768, 3072), (48, 768, 768), (12, 768, 3072), (4096, 4096)]:
        M, K = shape[-2], shape[-1]
        B = shape[0] if len(shape) == 3 else 1
        X = torch.randn(*shape, device="cuda").to(bf)
        variants = {"triton": lambda: kernels.xxt(X), "triton_compile": lambda: oursx_c(X), "eager": lambda: refx(X),
                    "compile": lambda: refx_c(X)}
        with torch.no_grad():
            run_case(rows_ns, "xxt", "x".join(map(str, shape)) + " bf16", variants, B * M * (M + 1) * K,
                     2 * B * (M * K + M * M), peak_tflops, peak_tbs,
                     check=lambda: rel(kernels.xxt(X), refx(X)))

    table = "\n\n".join([fmt_table(rows_ce, True), fmt_table(rows_mlp, False), fmt_table(rows_ns, False)])
    table += "\n\nCE backward pieces and settings (same run):\n\n" + "\n".join("- " + ln for ln in tune_lines)
    cmd = "python3 " + " ".join(sys.argv)
    head = (f"Device: **{dev}** (torch {torch.__version__}, triton {triton.__version__}, {platform.python_version()}), "
            f"measured in this run: bf16 matmul **{peak_tflops:.0f} TFLOP/s** (8192^3 through torch), "
            f"device copy **{peak_tbs:.2f} TB/s** (2 GiB, read+write counted).\n\n"
            f"Command: `{cmd}`\n")
    block = head + "\n" + table + "\n"
    print("\n" + block, flush=True)
    if args.doc:
        text = open(args.doc).read() if os.path.exists(args.doc) else f"{BEGIN}\n{END}\n"
        if BEGIN not in text:
            text += f"\n{BEGIN}\n{END}\n"
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1] if END in rest else ""
        open(args.doc, "w").write(pre + BEGIN + "\n" + block + END + post)


if __name__ == "__main__":
    main()
