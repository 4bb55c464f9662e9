"""The call that failed in the study's first trial, alone: torch._scaled_mm of an FP8 activation (16384 x 3072) by a
column-major slice of an FP8 weight bank (storage offset 768 x 3072, like `_mlp_down_proj_f8`), per-tensor scales,
use_fast_accum, bf16 out, as the compiled graph issued it (`extern_kernels._scaled_mm`). Five scale layouts: the
graph passed one-element slices of a float32 buffer at an element offset (a 4-byte-aligned pointer), so 16-byte
aligned and cloned scales, and the layout the study's `edits` give, are tried beside it. Seconds on a GPU; on a CPU it runs with 64 rows (no cuBLAS there).

    python3 docs/studies/2026-12-06-modded-nanogpt-h200/probe_scaled_mm.py
"""
import torch
dev = "cuda" if torch.cuda.is_available() else "cpu"
M, K, N = (16384 if dev == "cuda" else 64), 3072, 768
a = torch.randn(M, K, device=dev).to(torch.float8_e4m3fn)
bank = torch.randn(12, N, K, device=dev).to(torch.float8_e4m3fn)  # (12, out, in): a slice transposed is column-major
b = bank[1].t()  # (K, N), strides (1, K), storage offset N*K
scales = torch.ones(4, device=dev)
aligned = scales.view(4, 1).expand(4, 4).contiguous()  # the study's edit: 4 slots a layer, a 16-byte step
cases = {"scale at offset 0": (scales[0:1], scales[0:1]), "scale at offset 1 (as in the failing graph)": (scales[1:2], scales[1:2]),
         "scale at offset 4 (16 bytes)": (torch.ones(8, device=dev)[4:5],) * 2,
         "scale cloned": (scales[1:2].clone(), scales[1:2].clone()),
         "scale as the study's edit gives it (layer 1)": (aligned[1, :1], aligned[1, :1])}
for name, (sa, sb) in cases.items():
    try:
        out = torch._scaled_mm(a, b, out_dtype=torch.bfloat16, scale_a=sa, scale_b=sb, use_fast_accum=True)
        print(f"{name}: ok {tuple(out.shape)}")
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {str(e)[:160]}")
