"""Host time of one kernel launch, measured on CPU: Triton's ``kernel[grid](...)`` against
``roiops.gpu.launch.Kernel``'s direct launch, and the compiled launcher's share.

No GPU is needed: Triton's driver is replaced by one that answers the current device and
stream (device 0, stream 0, an sm_90 target), and compiling a kernel by a stand-in
compiled kernel whose launcher records its arguments and returns (``fake_gpu``), so that
only the Python of a launch is timed: Triton's binding and specialisation of the
arguments, its cache key, options and launch metadata, or ``Kernel``'s fingerprint and
table. A real launch adds the compiled launcher's C code and the CUDA driver's time
(6.5 us in all on an H100 machine's host, ``benchmarks/host_profile.py``).

    python benchmarks/launch_overhead.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction


class FakeDriver:
    """Triton's active driver, as far as a launch asks it: device, stream, target."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


class FakeCompiled:
    """A compiled kernel that records its last launch instead of running: ``key`` is
    Triton's cache key of the specialisation it was compiled for."""

    function = 0
    packed_metadata = None

    def __init__(self, key):
        self.key = key
        self.launches = []

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *launch):
        self.launches[:] = [launch]  # (the last: a timing loop keeps no list)


@contextlib.contextmanager
def fake_gpu():
    """Inside: Triton launches against ``FakeDriver`` and compiles ``FakeCompiled``s."""

    def compile_stand_in(self, key, signature, device, *rest):
        compiled = self.device_caches[device][0][key] = FakeCompiled(key)
        return compiled

    real, active = JITFunction._do_compile, driver._active  # (none on a machine without GPU)
    driver.set_active(FakeDriver())
    JITFunction._do_compile = compile_stand_in
    try:
        yield
    finally:
        JITFunction._do_compile = real
        driver._active = active


def us_per_call(fns: dict, calls: int) -> dict:
    """{name: median over 7 rounds of the time per call of ``calls`` calls}, the
    functions taking turns within each round (this VM's speed drifts between runs)."""
    rounds = {name: [] for name in fns}
    for _ in range(7):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            rounds[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {name: statistics.median(times) for name, times in rounds.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args(argv)
    # compiled kernels (JITFunction), not interpreted ones: set before roiops.gpu is imported
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    from roiops.gpu import roi_align as gpu
    from roiops.gpu.rois import scale_bits
    from roiops.gpu.tiles import bins_grid

    # roi_align's forward launch of a 16-RoI call (gpu_report.latency's shapes)
    x = torch.randn(2, 256, 50, 68)
    rois = torch.tensor([[i % 2, 10.0 + i, 10.0, 100.0 + i, 120.0] for i in range(16)])
    out = x.new_empty((16, 256, 7, 7))
    grid, block, warps = bins_grid(16, 256, 7, 7, "roi_align")
    kernel = gpu.roi_align_forward_kernel
    launch = (x, rois, out, out, 2, 256, 50, 68, scale_bits(0.25), 2)
    mode = dict(PH=7, PW=7, ALIGNED=True, MAX_MODE=False, PS=False, BLOCK=block,
                ROIS_INNER=True, num_warps=warps)  # fmt: skip
    with fake_gpu():
        compiled = kernel[grid](*launch, **mode)
        _, tail = next(iter(kernel.table.values()))
        arguments = (*launch, *tail)
        rows = {
            "Triton: kernel.jit[grid](...)": lambda: kernel.jit[grid](*launch, **mode),
            "roiops: Kernel[grid](...)": lambda: kernel[grid](*launch, **mode),
            "the compiled launcher's call alone": lambda: compiled.run(
                grid[0], 1, 1, 0, 0, None, None, None, None, *arguments
            ),
        }
        print(f"Triton {triton.__version__}, host us per launch of roi_align_forward_kernel "
              f"({args.calls} calls x 7 rounds, median)")  # fmt: skip
        for name, us in us_per_call(rows, args.calls).items():
            print(f"{name:40s} {us:7.2f}")


if __name__ == "__main__":
    main()
