"""Trace the Triton path of every speedrun_kernels op (forward and backward) without a GPU; prints JSON.

Run as a script (a fresh process: the kernel modules must be imported without TRITON_INTERPRET). No GPU
can run here, so two stand-ins, and only these: tensors on the ``meta`` device with the ops told that the
kernels run there, and a Triton driver that reports an sm_90 CUDA target, so Triton compiles each kernel
to TTIR and torch finds out which arguments a kernel writes. What is real: AOTAutograd's functionalised
forward+backward trace, exactly as torch.compile makes it before inductor, with each launch recorded as a
``triton_kernel_wrapper_functional`` node. Inductor's code generation for the kernels is not exercised.
"""
import importlib
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402


class _Sm90Driver:  # what torch asks the driver while tracing: the target to compile TTIR for
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def is_active(self):
        return True


def main():
    triton.runtime.driver.set_active(_Sm90Driver())
    from torch._functorch.aot_autograd import aot_export_joint_simple
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    mods = [importlib.import_module(f"kernels.{m}") for m in ("softcap_ce", "relu2_mlp", "xxt")]
    for m in mods:
        m.kernel_runs = lambda kernel, *tensors: kernel
    mods[0].num_sms = lambda device: 132
    ops = torch.ops.speedrun_kernels

    bf = torch.bfloat16
    x = torch.empty(300, 64, device="meta", dtype=bf, requires_grad=True)
    w = torch.empty(203, 64, device="meta", dtype=bf, requires_grad=True)  # V = 203: padded to 256 in the backward
    t = torch.empty(300, device="meta", dtype=torch.long)
    w_up = torch.empty(96, 64, device="meta", dtype=bf, requires_grad=True)
    X = torch.empty(3, 40, 64, device="meta", dtype=bf, requires_grad=True)

    def f(x, w, t, w_up, X):
        loss = ops.softcap_ce_fwd(x, w, t, 15.0, "mean", -100, 128, True)[0]  # 3 backward chunks
        y = ops.relu2_mlp_up(x, w_up, True)
        c = ops.xxt(X, True)
        return (loss + y.float().sum() + c.float().sum(),)

    # trace_joint=True refuses graphs that write into an input that requires grad
    gm = aot_export_joint_simple(f, [x, w, t, w_up, X], trace_joint=True)
    launches = []
    for node in gm.graph.nodes:
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            kernel = getattr(kernel, "fn", kernel)  # autotuned: the JIT function inside
            launches.append({"kernel": kernel.fn.__name__, "writes": sorted(node.kwargs["tensors_to_clone"])})
    other = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function"
                    and "speedrun_kernels" in str(n.target)})
    print(json.dumps({"launches": launches, "opaque_ops": other}))


if __name__ == "__main__":
    main()
