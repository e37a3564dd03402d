"""roi_align_rotated against mmcv's CPU kernel, built here from mmcv's source release.

mmcv has no wheels for current torch and its full build does not compile against
torch >= 2.10 headers as released (it asks for C++14/17; torch's headers need C++20).
This script fetches mmcv 2.2.0's source release from PyPI (checked against its
sha256), compiles only its rotated RoIAlign (the CPU kernel, its dispatcher and the
two headers they include) with ``torch.utils.cpp_extension`` in C++20, and then

* compares roiops with it on random rotated boxes (boxes past the map's edges too), all
  of mmcv's conventions (``clockwise``, ``aligned``), fixed and adaptive sampling,
  forward and input gradient, float32 and float64, and fails if they differ beyond
  ``TOLERANCE``;
* times both, forward and backward, on one case.

Nothing of mmcv enters roiops: the source and the build stay in ``--cache``
(default ``build/mmcv-anchor``, ignored by git). Run: ``python benchmarks/mmcv_anchor.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

import roiops

SDIST = (
    "https://files.pythonhosted.org/packages/e9/a2/"
    "57a733e7e84985a8a0e3101dfb8170fc9db92435c16afad253069ae3f9df/mmcv-2.2.0.tar.gz"
)
SHA256 = "ac479247e808d8802f89eadf04d4118de86bdfe81361ec5aed0cc1bf731c67c9"
CSRC = "mmcv-2.2.0/mmcv/ops/csrc/"
NEEDED = [
    "common/pytorch_cpp_helper.hpp",
    "common/pytorch_device_registry.hpp",
    "pytorch/roi_align_rotated.cpp",
    "pytorch/cpu/roi_align_rotated.cpp",
]
BINDING = """
#include <torch/extension.h>
using at::Tensor;
void roi_align_rotated_forward(Tensor input, Tensor rois, Tensor output, int pooled_height,
    int pooled_width, float spatial_scale, int sampling_ratio, bool aligned, bool clockwise);
void roi_align_rotated_backward(Tensor grad_output, Tensor rois, Tensor grad_input,
    int pooled_height, int pooled_width, float spatial_scale, int sampling_ratio,
    bool aligned, bool clockwise);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &roi_align_rotated_forward);
  m.def("backward", &roi_align_rotated_backward);
}
"""


def fetch(cache: Path) -> Path:
    """mmcv's csrc files this needs, extracted under ``cache``."""
    archive = cache / "mmcv-2.2.0.tar.gz"
    if not archive.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(SDIST, timeout=120) as response:
            data = response.read()
        if hashlib.sha256(data).hexdigest() != SHA256:
            raise SystemExit(f"{SDIST}: sha256 mismatch")
        archive.write_bytes(data)
    with tarfile.open(archive) as tar:
        for name in NEEDED:
            tar.extract(CSRC + name, cache, filter="data")
    return cache / CSRC


def build(cache: Path):
    from torch.utils import cpp_extension

    csrc = fetch(cache)
    binding = cache / "binding.cpp"
    binding.write_text(BINDING)
    # the dispatcher and the CPU kernel share a file name: ninja needs distinct objects
    dispatcher = cache / "dispatch_roi_align_rotated.cpp"
    dispatcher.write_bytes((csrc / "pytorch/roi_align_rotated.cpp").read_bytes())
    return cpp_extension.load(
        name="mmcv_roi_align_rotated",
        sources=[str(binding), str(dispatcher), str(csrc / "pytorch/cpu/roi_align_rotated.cpp")],
        extra_include_paths=[str(csrc / "common")],
        extra_cflags=["-O3", "-std=c++20"],
        build_directory=str(cache),
        verbose=False,
    )  # fmt: skip


def mmcv_call(ext, x, rois, size, scale, ratio, aligned, clockwise, grad=None):
    """mmcv's forward (and input gradient for ``grad``), as ``mmcv.ops.roi_align_rotated``
    calls its kernels."""
    out = x.new_zeros((rois.shape[0], x.shape[1], size, size))
    ext.forward(x, rois, out, size, size, scale, ratio, aligned, clockwise)
    if grad is None:
        return out, None
    gx = torch.zeros_like(x)
    ext.backward(grad.contiguous(), rois, gx, size, size, scale, ratio, aligned, clockwise)
    return out, gx


def roiops_call(x, rois, size, scale, ratio, aligned, clockwise, grad=None):
    xr = x.detach().clone().requires_grad_(grad is not None)
    out = roiops.roi_align_rotated(
        xr, rois, size, scale, ratio, aligned, angle_unit="radians", clockwise=clockwise
    )
    if grad is None:
        return out.detach(), None
    out.backward(grad)
    return out.detach(), xr.grad


def random_case(rng, dtype, n=2, c=8, h=24, w=30, k=64):
    x = torch.from_numpy(rng.standard_normal((n, c, h, w))).to(dtype)
    cx, cy = rng.uniform(-4, w * 1.3, k), rng.uniform(-4, h * 1.3, k)
    bw, bh = rng.uniform(0.5, w, k), rng.uniform(0.5, h, k)
    rois = np.stack([rng.integers(0, n, k), cx, cy, bw, bh, rng.uniform(-np.pi, np.pi, k)], 1)
    return x, torch.from_numpy(rois).to(dtype)


# what "the same numbers" means here: float64 bit for bit (the same operations in the
# same order), float32 within a few ulps of values of order 1
TOLERANCE = {torch.float32: 1e-5, torch.float64: 0.0}


def compare(ext, rng) -> tuple[list[str], bool]:
    """The comparison table, and whether every difference is within ``TOLERANCE``."""
    ok = True
    lines = ["dtype    aligned clockwise sr  scale  forward max|diff|  gradient max|diff|"]
    for dtype in (torch.float32, torch.float64):
        for aligned in (True, False):
            for clockwise in (False, True):
                for ratio, scale in ((2, 0.5), (0, 1.0)):
                    x, rois = random_case(rng, dtype)
                    grad = torch.randn((rois.shape[0], x.shape[1], 5, 5), dtype=dtype)
                    a = mmcv_call(ext, x, rois, 5, scale, ratio, aligned, clockwise, grad)
                    b = roiops_call(x, rois, 5, scale, ratio, aligned, clockwise, grad)
                    fwd = (a[0] - b[0]).abs().max().item()
                    bwd = (a[1] - b[1]).abs().max().item()
                    ok &= max(fwd, bwd) <= TOLERANCE[dtype]
                    lines.append(f"{str(dtype)[6:]:8s} {aligned!s:7s} {clockwise!s:9s} "
                                 f"{ratio:2d} {scale:5.2f}  {fwd:17.3g}  {bwd:18.3g}")  # fmt: skip
    return lines, ok


def timed(fn, repeat=10):
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def bench(ext, rng) -> list[str]:
    # an oriented-detection head: 2 images, 256 channels at stride 8, 512 rotated boxes
    n, c, h, w, k, size = 2, 256, 100, 136, 512, 7
    x = torch.from_numpy(rng.standard_normal((n, c, h, w), dtype=np.float32))
    scale = 1 / 8
    cx, cy = rng.uniform(0, w / scale, k), rng.uniform(0, h / scale, k)
    bw, bh = rng.uniform(16, 200, k), rng.uniform(16, 200, k)
    rois = torch.from_numpy(
        np.stack([rng.integers(0, n, k), cx, cy, bw, bh, rng.uniform(-np.pi, np.pi, k)], 1)
    ).float()
    grad = torch.randn(k, c, size, size)
    ro = torch.ops.roiops
    t = {
        "forward": (
            timed(lambda: mmcv_call(ext, x, rois, size, scale, 2, True, False)),
            timed(lambda: ro.roi_align_rotated(x, rois, scale, size, size, 2, True, False, False)),
        ),
    }
    backward_ms = timed(lambda: ext.backward(grad, rois, torch.zeros_like(x), size, size,
                                             scale, 2, True, False))  # fmt: skip
    ours = timed(lambda: ro.roi_align_rotated_backward(
        grad, rois, scale, size, size, 2, True, False, False, n, c, h, w))  # fmt: skip
    t["backward"] = (backward_ms, ours)
    lines = [f"case: x {tuple(x.shape)} float32, {k} rotated boxes 16-200 px, 7x7, sr=2",
             "direction  mmcv ms  roiops ms  speed-up"]  # fmt: skip
    for direction, (theirs, mine) in t.items():
        lines.append(f"{direction:9s} {theirs:8.2f} {mine:10.2f} {theirs / mine:8.1f}x")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="build/mmcv-anchor")
    args = p.parse_args()
    ext = build(Path(args.cache))
    rng = np.random.default_rng(0)
    lines, same = compare(ext, rng)
    print("\n".join(lines))
    print()
    print("\n".join(bench(ext, rng)))
    if not same:
        raise SystemExit("roiops and mmcv differ beyond the tolerance (see the table)")


if __name__ == "__main__":
    main()
