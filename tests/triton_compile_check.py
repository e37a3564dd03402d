"""Compile every Triton kernel for a Hopper GPU (sm_90), no GPU needed: run as a script.

Triton's interpreter (how the other tests run the kernels here) accepts code that the
compiler rejects, e.g. a non-constexpr global; this catches it on CPU-only machines.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "0"  # before triton.jit runs on the kernels

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from roiops.gpu.roi_align import roi_align_backward_kernel, roi_align_forward_kernel  # noqa: E402
from roiops.gpu.roi_pool import roi_pool_backward_kernel, roi_pool_forward_kernel  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def compile_for_gpu(fn, pointers, constexprs):
    signature = {
        name: pointers.get(name, "constexpr" if name in constexprs else "i32")
        for name in fn.arg_names
    }
    kernel = triton.compile(ASTSource(fn, signature, constexprs), target=TARGET)
    assert "ptx" in kernel.asm, fn.__name__


def main() -> int:
    for dt in ("fp32", "fp16", "bf16", "fp64"):
        rois = "*fp64" if dt == "fp64" else "*fp32"
        common = {"ROIS": rois, "SCALE": rois, "ARGMAX": "*i32"}
        fwd = {**common, "X": f"*{dt}", "OUT": f"*{dt}"}
        bwd = {**common, "G": f"*{dt}", "GX": f"*{dt}", "ORDER": "*i64", "IMAGE_START": "*i64"}
        tiles = {"BLOCK_C": 16, "TILE_H": 8, "TILE_W": 8}
        for aligned in (False, True):
            for max_mode in (False, True):
                mode = {"PH": 7, "PW": 7, "ALIGNED": aligned, "MAX_MODE": max_mode}
                compile_for_gpu(
                    roi_align_forward_kernel, fwd, {**mode, "BLOCK_C": 32, "BLOCK_P": 64}
                )
                compile_for_gpu(
                    roi_align_backward_kernel, bwd, {**mode, **tiles, "PH_BLOCK": 8, "PW_BLOCK": 8}
                )
        compile_for_gpu(
            roi_pool_forward_kernel, fwd, {"PH": 7, "PW": 7, "BLOCK_C": 32, "BLOCK_P": 64}
        )
        compile_for_gpu(roi_pool_backward_kernel, bwd, {"PH": 7, "PW": 7, **tiles})
    print("all Triton kernels compile for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
