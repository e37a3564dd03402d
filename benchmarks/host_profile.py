"""Where the host time of a small CUDA call goes: each layer timed alone, and a profile.

On CUDA a call with few RoIs costs what its host side costs (the kernels run
asynchronously). This times, on the same 16-RoI inputs as ``gpu_report.latency``, the
layers of a call from the bottom up: Triton's compiled launcher with its arguments
ready, Triton's ``kernel[grid](...)`` (binding, specialisation key, cache lookup) and
roiops' direct launch of the same (``roiops.gpu.launch.Kernel``), the launcher function
(allocation + launch), the public function, the custom op through torch's dispatcher
(as ``roiops bench`` calls it), the call recording autograd, and torchvision's; then
``cProfile`` of the slowest, by own time.

    PYTHONPATH=. python3 benchmarks/host_profile.py [--calls 500] [--profile 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import numpy as np
import torch
from gpu_report import host_us_per_call  # (this file's folder is on sys.path)

import roiops


def rows() -> dict:
    import torchvision

    from roiops.gpu import roi_align as gpu
    from roiops.gpu.fixed_point import Accumulator
    from roiops.gpu.rois import scale_bits
    from roiops.gpu.tiles import bins_grid

    rng = np.random.default_rng(0)
    x = torch.randn(2, 256, 50, 68, device="cuda")
    leaf = x.clone().requires_grad_()
    sides = rng.uniform(16, 400, (16, 2))
    x1, y1 = rng.uniform(0, 800, 16), rng.uniform(0, 600, 16)
    boxes = np.stack([rng.integers(0, 2, 16), x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], 1)
    rois = torch.tensor(boxes, dtype=torch.float32, device="cuda")
    out = x.new_empty((16, 256, 7, 7))
    grid, block, warps = bins_grid(16, 256, 7, 7, "roi_align")
    consts = dict(PH=7, PW=7, ALIGNED=True, MAX_MODE=False, PS=False, BLOCK=block,
                  ROIS_INNER=True)  # fmt: skip
    args = (x, rois, out, out, 2, 256, 50, 68, scale_bits(0.25), 2)
    kernel = gpu.roi_align_forward_kernel

    def launch():
        return kernel.jit[grid](*args, **consts, num_warps=warps)

    compiled = launch()
    all_args = (*args, *consts.values())
    runner = compiled[(grid[0], 1, 1)]
    stream = torch.cuda.current_stream().cuda_stream
    compiled._init_handles()

    def compiled_run():
        compiled.run(grid[0], 1, 1, stream, compiled.function, compiled.packed_metadata, None,
                     None, None, *all_args)  # fmt: skip

    ops = torch.ops.roiops
    tv_ops = torch.ops.torchvision
    grad = torch.randn(16, 256, 7, 7, device="cuda")
    grad_input = torch.empty_like(x)
    sums = Accumulator(grad, x.shape)
    return {
        "CompiledKernel.run, arguments ready": compiled_run,
        "CompiledKernel[grid](...)": lambda: runner(*all_args),
        "kernel.jit[grid](...) (JITFunction.run)": launch,
        "kernel[grid](...) (roiops.gpu.launch.Kernel)": (
            lambda: kernel[grid](*args, **consts, num_warps=warps)
        ),
        "launcher roi_align_forward": lambda: gpu.roi_align_forward(
            x, rois, 0.25, 7, 7, 2, True, False
        ),
        "roiops.roi_align": lambda: roiops.roi_align(x, rois, 7, 0.25, 2, True),
        "torch.ops.roiops.roi_align": lambda: ops.roi_align(x, rois, 0.25, 7, 7, 2, True),
        "roiops.roi_align, recording autograd": lambda: roiops.roi_align(
            leaf, rois, 7, 0.25, 2, True
        ),
        "torch.ops.roiops.roi_pool (with argmax)": lambda: ops.roi_pool(x, rois, 0.25, 7, 7),
        "roiops.roi_pool": lambda: roiops.roi_pool(x, rois, 7, 0.25),
        "roiops.roi_pool, recording autograd": lambda: roiops.roi_pool(leaf, rois, 7, 0.25),
        "torch.empty": lambda: x.new_empty((16, 256, 7, 7)),
        "torchvision.ops.roi_align": lambda: torchvision.ops.roi_align(x, rois, 7, 0.25, 2, True),
        "torchvision.ops.roi_align, recording autograd": lambda: torchvision.ops.roi_align(
            leaf, rois, 7, 0.25, 2, True
        ),
        "torch.ops.torchvision.roi_pool": lambda: torch.ops.torchvision.roi_pool(
            x, rois, 0.25, 7, 7
        ),
        # the backward (deterministic: three launches, an int64 accumulator) from the
        # bottom up
        "Accumulator (allocation, zero_and_bound)": lambda: Accumulator(grad, x.shape),
        "roi_align_scatter": lambda: gpu.roi_align_scatter(
            sums, grad, rois, None, 0.25, 7, 7, 2, True
        ),
        "Accumulator.write_to": lambda: sums.write_to(grad_input),
        "launcher roi_align_backward": lambda: gpu.roi_align_backward(
            grad, rois, None, grad_input, 0.25, 7, 7, 2, True
        ),
        "torch.ops.roiops.roi_align_backward": lambda: ops.roi_align_backward(
            grad, rois, 0.25, 7, 7, 2, True, 2, 256, 50, 68
        ),
        "torch.ops.torchvision._roi_align_backward": lambda: tv_ops._roi_align_backward(
            grad, rois, 0.25, 7, 7, 2, 256, 50, 68, 2, True
        ),
    }


def profile(fn, calls: int, top: int) -> str:
    fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--profile", type=int, default=25,
                        help="profile lines to print (0: no profiles)")  # fmt: skip
    args = parser.parse_args(argv)
    table = rows()
    print(f"host us per call, 16 RoIs on {torch.cuda.get_device_name()}")
    for name, fn in table.items():
        print(f"{name:48s} {host_us_per_call(fn, args.calls):7.1f}")
    profiled = (
        "kernel.jit[grid](...) (JITFunction.run)",
        "kernel[grid](...) (roiops.gpu.launch.Kernel)",
        "roiops.roi_align, recording autograd",
        "torch.ops.roiops.roi_pool (with argmax)",
        "torch.ops.roiops.roi_align_backward",
    )
    for name in profiled if args.profile else ():
        print(f"\n--- {name}: {args.calls} calls, by own time")
        print(profile(table[name], args.calls, args.profile))


if __name__ == "__main__":
    main()
