"""Compile every Triton kernel for a Hopper GPU (sm_90), no GPU needed: run as a script.

Triton's interpreter (how the other tests run the kernels here) accepts code that the
compiler rejects, e.g. a non-constexpr global; this catches it on CPU-only machines.
Each kernel is compiled at its launch configuration, and Triton's own ptxas reports its
registers per thread: the fp32/fp16/bf16 kernels must not spill (a regression guard for
speed that needs no GPU; fp64 may).
"""

import os
import re
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"  # before triton.jit runs on the kernels

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from roiops.gpu.roi_align import roi_align_backward_kernel, roi_align_forward_kernel  # noqa: E402
from roiops.gpu.roi_pool import roi_pool_backward_kernel, roi_pool_forward_kernel  # noqa: E402
from roiops.gpu.tiles import ROI_BLOCK, bins_grid, gradient_grid  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def registers_and_spills(ptx: str) -> tuple[int, int]:
    """(registers per thread, bytes spilled) that ptxas reports for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run(
            [PTXAS, "-v", "--gpu-name=sm_90a", path, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        )
    registers = re.search(r"Used (\d+) registers", done.stderr)
    spilled = re.search(r"(\d+) bytes spill stores", done.stderr)
    return int(registers.group(1)), int(spilled.group(1))


def compile_for_gpu(fn, pointers, constexprs, num_warps):
    signature = {
        name: pointers.get(name, "constexpr" if name in constexprs else "i32")
        for name in fn.arg_names
    }
    source = ASTSource(fn, signature, constexprs)
    kernel = triton.compile(source, target=TARGET, options={"num_warps": num_warps})
    assert "ptx" in kernel.asm, fn.__name__
    if not os.path.exists(PTXAS):  # a Triton without its bundled CUDA tools
        return
    registers, spilled = registers_and_spills(kernel.asm["ptx"])
    dtype = pointers.get("X", pointers.get("G"))
    mode = "max" if constexprs.get("MAX_MODE") else ""
    print(f"{fn.__name__:26s} {dtype:6s} {mode:3s} {num_warps} warps {registers:3d} registers")
    assert spilled == 0 or dtype == "*fp64", f"{fn.__name__} {dtype} spills {spilled} bytes"


def main() -> int:
    # the launch configuration of 256 channels and 7x7 bins
    _, block, fwd_warps = bins_grid(1, 256, 7, 7)
    forward_tile = {"BLOCK": block}
    _, block_c, _, _, tile, _ = gradient_grid(1, 256, 8, 8, "avg")
    tiles = {"BLOCK_C": block_c, "TILE_H": tile, "TILE_W": tile, "BLOCK_R": ROI_BLOCK}
    bwd_warps = {m: gradient_grid(1, 256, 8, 8, m)[-1] for m in ("avg", "max", "pool")}
    for dt in ("fp32", "fp16", "bf16", "fp64"):
        rois = "*fp64" if dt == "fp64" else "*fp32"
        common = {"ROIS": rois, "SCALE": rois, "ARGMAX": "*i32"}
        fwd = {**common, "X": f"*{dt}", "OUT": f"*{dt}"}
        bwd = {**common, "G": f"*{dt}", "GX": f"*{dt}", "ORDER": "*i64", "IMAGE_START": "*i64"}
        for aligned in (False, True):
            for max_mode in (False, True):
                mode = {"PH": 7, "PW": 7, "ALIGNED": aligned, "MAX_MODE": max_mode}
                compile_for_gpu(roi_align_forward_kernel, fwd, {**mode, **forward_tile}, fwd_warps)
                compile_for_gpu(
                    roi_align_backward_kernel,
                    bwd,
                    {**mode, **tiles, "PH_BLOCK": 8, "PW_BLOCK": 8},
                    bwd_warps["max" if max_mode else "avg"],
                )
        pool = {"PH": 7, "PW": 7}
        for store in (False, True):
            compile_for_gpu(
                roi_pool_forward_kernel,
                fwd,
                {**pool, **forward_tile, "STORE_ARGMAX": store},
                fwd_warps,
            )
        compile_for_gpu(roi_pool_backward_kernel, bwd, {**pool, **tiles}, bwd_warps["pool"])
    print("all Triton kernels compile for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
