"""Host time per call of the CUDA path, measured on CPU: a proxy for small-call latency.

On CUDA the kernels run asynchronously, so a call with few RoIs costs what its Python
costs. This runs the Triton backend on CPU tensors, its kernels compiled and launched
against stand-ins (``launch_overhead.fake_gpu``: Triton's driver answers device 0 and
stream 0, and a compiled kernel's launcher records its arguments and returns), so that
only the Python around and of the launches is timed: validation, backend choice, the
custom op's dispatch, allocation, the launchers' arguments and ``roiops.gpu.launch``'s
direct launches (the box-value check is off, as on CUDA). A real launch adds the
compiled launcher's C code and the CUDA driver's (6.5 us on an H100 machine's host,
``benchmarks/host_profile.py``), and a GPU host may run Python at another speed: compare
rows within one run. ``make gpu`` measures the real thing on a GPU
(``gpu_report.latency``).

    python benchmarks/host_overhead.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# compiled kernels (JITFunction), not interpreted ones: set before roiops.gpu is imported
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from launch_overhead import fake_gpu  # noqa: E402

import roiops  # noqa: E402
from roiops import _backend  # noqa: E402


def take_cuda_path() -> None:
    """CPU tensors take the CUDA path: roiops takes their device for a CUDA one
    (``_backend.device_type``), so that the default backend choice picks Triton and the
    box values are not read, as on CUDA, through the same code."""
    _backend._DEVICE_TYPES[torch.device("cpu")] = "cuda"


def us_per_call(fn, calls: int) -> float:
    """Median over 7 rounds of the time per call of ``calls`` back-to-back calls."""
    fn()
    rounds = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    take_cuda_path()
    from roiops.gpu.roi_align import roi_align_forward

    x = torch.randn(2, 256, 50, 68)  # the shapes of gpu_report.latency
    leaf = x.clone().requires_grad_()
    scores = torch.randn(1, 21 * 49, 10, 10)  # R-FCN's position-sensitive class scores
    rois = torch.tensor([[i % 2, 10.0 + i, 10.0, 100.0 + i, 120.0] for i in range(16)])
    grad = torch.randn(16, 256, 7, 7)
    ps_grad = torch.randn(16, 21, 7, 7)
    small, small_grad = torch.randn(2, 8, 10, 10), torch.randn(16, 8, 7, 7)

    def step(op, *params):
        leaf = small.detach().requires_grad_()
        op(leaf, rois, *params).backward(small_grad)

    @torch.library.custom_op("roiops_bench::empty", mutates_args=())
    def empty_op(x: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return x.new_empty((rois.shape[0], x.shape[1], 7, 7))

    rows = {
        "roiops.roi_align, 16 RoIs": lambda: roiops.roi_align(x, rois, 7, 0.25, 2, True),
        "roiops.roi_align, recording autograd": (
            lambda: roiops.roi_align(leaf, rois, 7, 0.25, 2, True)
        ),
        "torch.ops.roiops.roi_align (the bench's)": (
            lambda: torch.ops.roiops.roi_align(x, rois, 0.25, 7, 7, 2, True)
        ),
        "roiops.roi_pool, 16 RoIs": lambda: roiops.roi_pool(x, rois, 7, 0.25),
        "torch.ops.roiops.ps_roi_pool": (
            lambda: torch.ops.roiops.ps_roi_pool(scores, rois, 1 / 16, 7, 7)
        ),
        "torch.ops.roiops.ps_roi_align": (
            lambda: torch.ops.roiops.ps_roi_align(scores, rois, 1 / 16, 7, 7, 2)
        ),
        # the backwards as the bench calls them (each builds the fixed-point accumulator
        # and launches three kernels: zero and max |grad|, scatter, conversion)
        "torch.ops.roiops.roi_align_backward": lambda: torch.ops.roiops.roi_align_backward(
            grad, rois, 0.25, 7, 7, 2, True, 2, 256, 50, 68
        ),
        "torch.ops.roiops.ps_roi_pool_backward": lambda: torch.ops.roiops.ps_roi_pool_backward(
            ps_grad, rois, 1 / 16, 7, 7, 1, 21 * 49, 10, 10
        ),
        "torch.ops.roiops.ps_roi_align_backward": (
            lambda: torch.ops.roiops.ps_roi_align_backward(
                ps_grad, rois, 1 / 16, 7, 7, 2, 1, 21 * 49, 10, 10
            )
        ),
        # forward and backward through autograd, as training runs them (a small map: the
        # proxy's CPU tensors would otherwise time autograd's copies of a large gradient)
        "roiops.roi_align, a training step": lambda: step(roiops.roi_align, 7, 0.25, 2, True),
        "roiops.roi_pool, a training step": lambda: step(roiops.roi_pool, 7, 0.25),
        "the launcher alone": lambda: roi_align_forward(x, rois, 0.25, 7, 7, 2, True, False),
        "an empty custom op (new_empty)": lambda: empty_op(x, rois),
        "new_empty": lambda: x.new_empty((16, 256, 7, 7)),
    }
    print(f"host us per call, kernels launched against stand-ins ({args.calls} calls x 7 "
          "rounds, median)")  # fmt: skip
    with fake_gpu():
        for name, fn in rows.items():
            print(f"{name:40s} {us_per_call(fn, args.calls):7.1f}")


if __name__ == "__main__":
    main()
