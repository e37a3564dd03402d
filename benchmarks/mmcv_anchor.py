"""roi_align_rotated, roi_align (average and max) and bezier_align against mmcv's CPU
kernels, built here from mmcv's source release.

mmcv has no wheels for current torch and its full build does not compile against
torch >= 2.10 headers as released (it asks for C++14/17; torch's headers need C++20).
This script fetches mmcv 2.2.0's source release from PyPI (checked against its
sha256), compiles only its rotated and plain RoIAlign (the CPU kernels, their
dispatchers and the two headers they include) with ``torch.utils.cpp_extension`` in
C++20, and then

* compares roiops with it on random rotated boxes (boxes past the map's edges too), all
  of mmcv's conventions (``clockwise``, ``aligned``), fixed and adaptive sampling,
  forward and input gradient, float32 and float64, and fails if they differ beyond
  ``TOLERANCE``;
* does the same for ``roi_align`` in mmcv's two ``pool_mode``s, ``"avg"`` and
  ``"max"`` (roiops' ``mode="max"``: mmcv is the library that ships the article's max
  over the sampling points);
* does the same for ``bezier_align`` (ABCNet's BezierAlign), which must be bit for bit;
* times both, forward and backward, on one case of the rotated op, roi_align's max mode
  and bezier_align.

Nothing of mmcv enters roiops: the source and the build stay in ``--cache``
(default ``build/mmcv-anchor``, ignored by git). Run: ``python benchmarks/mmcv_anchor.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
    "pytorch/roi_align.cpp",
    "pytorch/cpu/roi_align.cpp",
    "pytorch/bezier_align.cpp",
    "pytorch/cpu/bezier_align.cpp",
]
BINDING = """
#include <torch/extension.h>
using at::Tensor;
void roi_align_rotated_forward(Tensor input, Tensor rois, Tensor output, int pooled_height,
    int pooled_width, float spatial_scale, int sampling_ratio, bool aligned, bool clockwise);
void roi_align_rotated_backward(Tensor grad_output, Tensor rois, Tensor grad_input,
    int pooled_height, int pooled_width, float spatial_scale, int sampling_ratio,
    bool aligned, bool clockwise);
void roi_align_forward(Tensor input, Tensor rois, Tensor output, Tensor argmax_y,
    Tensor argmax_x, int aligned_height, int aligned_width, float spatial_scale,
    int sampling_ratio, int pool_mode, bool aligned);
void roi_align_backward(Tensor grad_output, Tensor rois, Tensor argmax_y, Tensor argmax_x,
    Tensor grad_input, int aligned_height, int aligned_width, float spatial_scale,
    int sampling_ratio, int pool_mode, bool aligned);
void bezier_align_forward(Tensor input, Tensor rois, Tensor output, int aligned_height,
    int aligned_width, float spatial_scale, int sampling_ratio, bool aligned);
void bezier_align_backward(Tensor grad_output, Tensor rois, Tensor grad_input,
    int aligned_height, int aligned_width, float spatial_scale, int sampling_ratio,
    bool aligned);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bezier_align_forward", &bezier_align_forward);
  m.def("bezier_align_backward", &bezier_align_backward);
  m.def("forward", &roi_align_rotated_forward);
  m.def("backward", &roi_align_rotated_backward);
  m.def("roi_align_forward", &roi_align_forward);
  m.def("roi_align_backward", &roi_align_backward);
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
    sources = [str(binding)]
    for op in ("roi_align_rotated", "roi_align", "bezier_align"):
        # the dispatcher and the CPU kernel share a file name: ninja needs distinct objects
        dispatcher = cache / f"dispatch_{op}.cpp"
        dispatcher.write_bytes((csrc / f"pytorch/{op}.cpp").read_bytes())
        sources += [str(dispatcher), str(csrc / f"pytorch/cpu/{op}.cpp")]
    return cpp_extension.load(
        name="mmcv_roi_ops",
        sources=sources,
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


# roi_align against mmcv: the forward's values equal in either mode (the same operations
# in the same order as torchvision's CPU kernel; a zero's sign aside), the max mode's
# gradient too; the average's gradient divides by the sample count after the bilinear
# weight in mmcv (as in torchvision), before it in roiops: a last-bit difference where
# the count is not a power of two (an adaptive grid)
GRADIENT_TOLERANCE = {
    "avg": {torch.float32: 1e-5, torch.float64: 1e-14},
    "max": {torch.float32: 0.0, torch.float64: 0.0},
}
# mmcv's pool_mode codes (mmcv.ops.roi_align's ``pool_mode``), by roiops' mode
POOL_MODES = {"max": 0, "avg": 1}


def mmcv_roi_align(ext, x, rois, size, scale, ratio, mode, aligned, grad):
    """mmcv's roi_align forward and input gradient, as ``mmcv.ops.roi_align`` calls its
    kernels (the argmax coordinates are its max mode's alone)."""
    out = x.new_zeros((rois.shape[0], x.shape[1], size, size))
    shape = out.shape if mode == "max" else (0,)
    argmax_y, argmax_x = x.new_zeros(shape), x.new_zeros(shape)
    args = (size, size, scale, ratio, POOL_MODES[mode], aligned)
    ext.roi_align_forward(x, rois, out, argmax_y, argmax_x, *args)
    gx = torch.zeros_like(x)
    ext.roi_align_backward(grad.contiguous(), rois, argmax_y, argmax_x, gx, *args)
    return out, gx


def roiops_roi_align(x, rois, size, scale, ratio, mode, aligned, grad):
    xr = x.detach().clone().requires_grad_(True)
    out = roiops.roi_align(xr, rois, size, scale, ratio, aligned, mode=mode)
    out.backward(grad)
    return out.detach(), xr.grad


def random_boxes(rng, dtype, n=2, h=24, w=30, k=64, scale=1.0):
    """``Tensor[K, 5]`` in image coordinates: sides from a fifth of a cell to the map's,
    some past its edges (none of negative size: mmcv's CPU kernel asserts on them when
    aligned)."""
    x1, y1 = rng.uniform(-4, w * 1.1, k), rng.uniform(-4, h * 1.1, k)
    bw, bh = rng.uniform(0.2, w, k), rng.uniform(0.2, h, k)
    rois = np.stack([rng.integers(0, n, k), x1, y1, x1 + bw, y1 + bh], 1)
    rois[:, 1:] /= scale
    return torch.from_numpy(rois).to(dtype)


def compare_roi_align(ext, rng) -> tuple[list[str], bool]:
    """roi_align's comparison table in both of mmcv's modes, and whether every forward is
    equal and every gradient within ``GRADIENT_TOLERANCE``."""
    ok = True
    lines = ["dtype    mode aligned sr  scale  forward max|diff|  gradient max|diff|"]
    for dtype in (torch.float32, torch.float64):
        for mode in ("avg", "max"):
            for aligned in (True, False):
                for ratio, scale in ((2, 0.5), (0, 1.0), (1, 0.25)):
                    x = torch.from_numpy(rng.standard_normal((2, 8, 24, 30))).to(dtype)
                    rois = random_boxes(rng, dtype, scale=scale)
                    grad = torch.randn((rois.shape[0], x.shape[1], 5, 5), dtype=dtype)
                    a = mmcv_roi_align(ext, x, rois, 5, scale, ratio, mode, aligned, grad)
                    b = roiops_roi_align(x, rois, 5, scale, ratio, mode, aligned, grad)
                    fwd = (a[0] - b[0]).abs().max().item()
                    bwd = (a[1] - b[1]).abs().max().item()
                    ok &= fwd == 0 and bwd <= GRADIENT_TOLERANCE[mode][dtype]
                    lines.append(f"{str(dtype)[6:]:8s} {mode:4s} {aligned!s:7s} {ratio:2d} "
                                 f"{scale:5.2f}  {fwd:17.3g}  {bwd:18.3g}")  # fmt: skip
    return lines, ok


def compare_bezier_align(ext, rng) -> tuple[list[str], bool]:
    """bezier_align against mmcv's CPU kernel on random curved instances (some past the
    map's edges): the outputs and input gradients, float32 and float64, both
    ``aligned``, fixed and adaptive grids; and whether all are equal bit for bit (roiops'
    reference follows mmcv's C++ types, its float64 curve terms included). Dyadic scales:
    mmcv passes ``spatial_scale`` through a C++ float, also for float64 maps."""
    from roiops.bench import random_beziers

    ok = True
    lines = ["dtype    aligned sr  scale  forward max|diff|  gradient max|diff|"]
    for dtype in (torch.float32, torch.float64):
        for aligned in (True, False):
            for ratio, scale in ((2, 0.5), (0, 1.0), (1, 0.25)):
                x = torch.from_numpy(rng.standard_normal((2, 8, 24, 30))).to(dtype)
                beziers = torch.from_numpy(random_beziers(rng, 2, 64, 24 / scale, 30 / scale))
                beziers = beziers.to(dtype)
                grad = torch.randn((64, 8, 4, 6), dtype=dtype)
                out = x.new_zeros((64, 8, 4, 6))
                ext.bezier_align_forward(x, beziers, out, 4, 6, scale, ratio, aligned)
                gx = torch.zeros_like(x)
                ext.bezier_align_backward(grad, beziers, gx, 4, 6, scale, ratio, aligned)
                xr = x.clone().requires_grad_()
                ours = roiops.bezier_align(xr, beziers, (4, 6), scale, ratio, aligned)
                ours.backward(grad)
                fwd = (out - ours.detach()).abs().max().item()
                bwd = (gx - xr.grad).abs().max().item()
                ok &= torch.equal(out, ours.detach()) and torch.equal(gx, xr.grad)
                lines.append(f"{str(dtype)[6:]:8s} {aligned!s:7s} {ratio:2d} {scale:5.2f}  "
                             f"{fwd:17.3g}  {bwd:18.3g}")  # fmt: skip
    return lines, ok


# the cases whose mmcv results ``--write-expected`` stores for tests/test_roi_align.py:
# (mode, aligned, sampling_ratio, spatial_scale, map): "normal" values, or "ties", small
# integers, so that many bins hold equal maxima (the first sampling point wins in both)
EXPECTED_CASES = [
    ("max", True, 2, 0.5, "normal"),
    ("max", False, 0, 1.0, "ties"),
    ("max", True, 0, 1.0, "ties"),
    ("max", False, 1, 0.25, "normal"),
]


def write_expected(ext, path: Path) -> None:
    """mmcv's roi_align outputs and input gradients on ``EXPECTED_CASES``, float32 and
    float64, as JSON (exact: Python writes a float as the shortest text that reads back
    as the same double)."""
    rng = np.random.default_rng(2)
    cases = []
    for dtype in (torch.float32, torch.float64):
        for mode, aligned, ratio, scale, values in EXPECTED_CASES:
            shape = (2, 2, 6, 7)
            x = rng.standard_normal(shape) if values == "normal" else rng.integers(-2, 3, shape)
            x = torch.from_numpy(x).to(dtype)
            rois = random_boxes(rng, dtype, h=6, w=7, k=6, scale=scale)
            grad = torch.from_numpy(rng.standard_normal((6, 2, 3, 3))).to(dtype)
            out, gx = mmcv_roi_align(ext, x, rois, 3, scale, ratio, mode, aligned, grad)
            cases.append({
                "dtype": str(dtype)[6:], "mode": mode, "aligned": aligned,
                "sampling_ratio": ratio, "spatial_scale": scale, "output_size": 3,
                "input": x.tolist(), "rois": rois.tolist(), "grad_output": grad.tolist(),
                "output": out.tolist(), "grad_input": gx.tolist(),
            })  # fmt: skip
    source = f"mmcv 2.2.0's CPU roi_align kernel ({SDIST.rsplit('/', 1)[1]}, sha256 {SHA256})"
    path.write_text(json.dumps({"source": source, "cases": cases}) + "\n")


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
    # roi_align's max mode on the same map, its boxes the rotated ones' upright corners
    centre, half = rois[:, 1:3], rois[:, 3:5] / 2
    boxes = torch.cat([rois[:, :1], centre - half, centre + half], 1)
    t["roi_align max, forward + backward"] = (
        timed(lambda: mmcv_roi_align(ext, x, boxes, size, scale, 2, "max", True, grad)),
        timed(lambda: roiops_roi_align(x, boxes, size, scale, 2, "max", True, grad)),
    )
    # BezierAlign (ABCNet's text heads: 8 x 32 bins), curved instances over the same map
    from roiops.bench import random_beziers

    beziers = torch.from_numpy(random_beziers(rng, n, k, h / scale, w / scale)).float()
    grad_text = torch.randn(k, c, 8, 32)
    t["bezier_align 8x32, forward"] = (
        timed(lambda: ext.bezier_align_forward(x, beziers, x.new_zeros((k, c, 8, 32)), 8, 32,
                                               scale, 2, True)),
        timed(lambda: ro.bezier_align(x, beziers, scale, 8, 32, 2, True)),
    )  # fmt: skip
    t["bezier_align 8x32, backward"] = (
        timed(lambda: ext.bezier_align_backward(grad_text, beziers, torch.zeros_like(x), 8, 32,
                                                scale, 2, True)),
        timed(lambda: ro.bezier_align_backward(grad_text, beziers, scale, 8, 32, 2, True, n, c,
                                               h, w)),
    )  # fmt: skip
    lines = [f"case: x {tuple(x.shape)} float32, {k} rotated boxes 16-200 px, 7x7, sr=2",
             "direction                          mmcv ms  roiops ms  speed-up"]  # fmt: skip
    for direction, (theirs, mine) in t.items():
        lines.append(f"{direction:33s} {theirs:8.2f} {mine:10.2f} {theirs / mine:8.1f}x")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="build/mmcv-anchor")
    p.add_argument("--write-expected", metavar="PATH", type=Path,
                   help="write mmcv's roi_align results on EXPECTED_CASES to PATH "
                   "(tests/data/mmcv_roi_align.json) and stop")  # fmt: skip
    args = p.parse_args()
    ext = build(Path(args.cache))
    if args.write_expected:
        write_expected(ext, args.write_expected)
        return
    rng = np.random.default_rng(0)
    lines, same = compare(ext, rng)
    print("\n".join(lines))
    print()
    lines, same_roi_align = compare_roi_align(ext, rng)
    print("roi_align (mmcv pool_mode avg / max = roiops mode avg / max)")
    print("\n".join(lines))
    print()
    same &= same_roi_align
    lines, same_bezier = compare_bezier_align(ext, rng)
    print("bezier_align (roiops' must be mmcv's bit for bit)")
    print("\n".join(lines))
    print()
    same &= same_bezier
    print("\n".join(bench(ext, rng)))
    if not same:
        raise SystemExit("roiops and mmcv differ beyond the tolerance (see the table)")


if __name__ == "__main__":
    main()
