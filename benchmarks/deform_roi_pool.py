"""What deforming costs: ``roiops.deform_roi_pool`` against the plain aligned RoIAlign of
the same boxes, torchvision's and roiops', forward and forward+backward.

torchvision has no deformable RoI pooling and mmcv's runs on CUDA only (it has no CPU
kernel), so there is no like-for-like anchor here; the figure is how much slower the
deformable pooling is than the plain one a detector would otherwise run (the same
sampling grid, every bin moved: its points no longer share rows and columns across
bins, and backward also sums the offsets' gradient). Not part of ``roiops bench``,
whose geometric means compare like with like.

Run: ``python benchmarks/deform_roi_pool.py [--device cuda] [--json PATH]``.
"""

from __future__ import annotations

import torch
import torchvision

import roiops
from roiops import bench

CASES = {  # name: (N, C, H, W), RoIs, box sides (px), spatial_scale, sampling_ratio
    "cpu": [("b sr=0", (2, 256, 100, 136), 1024, (16, 200), 1 / 8, 0),
            ("b sr=2", (2, 256, 100, 136), 1024, (16, 200), 1 / 8, 2)],
    "cuda": [("b sr=0", (2, 256, 200, 272), 1000, (16, 400), 1 / 4, 0),
             ("b sr=2", (2, 256, 200, 272), 1000, (16, 400), 1 / 4, 2)],
}  # fmt: skip


def calls(shape, num_rois, box_px, scale, ratio, device):
    """{(library, direction): callable} on one case's inputs."""
    case = bench.Case("deform", "roi_align", shape, num_rois, box_px, scale, 7, ratio)
    (level,) = bench.make_inputs(case, device, torch.float32)
    x, rois, grad = level.x, level.rois, level.grad
    g = torch.Generator().manual_seed(0)
    # a trained offset head's shifts: a tenth of a RoI or so (gamma 0.1 times ~1)
    offset = torch.randn((num_rois, 2, 7, 7), generator=g).to(device)

    def train(fn, *extra):
        leaves = [x.detach().requires_grad_(), *(t.detach().requires_grad_() for t in extra)]
        torch.autograd.grad(fn(*leaves), leaves, grad)

    def tv(t):
        return torchvision.ops.roi_align(t, rois, 7, scale, ratio, aligned=True)

    def plain(t):
        return roiops.roi_align(t, rois, 7, scale, ratio, aligned=True)

    def deform(t, o):
        return roiops.deform_roi_pool(t, rois, o, 7, scale, ratio)

    return {
        ("torchvision roi_align", "forward"): lambda: tv(x),
        ("roiops roi_align", "forward"): lambda: plain(x),
        ("roiops deform_roi_pool", "forward"): lambda: deform(x, offset),
        ("torchvision roi_align", "train"): lambda: train(tv),
        ("roiops roi_align", "train"): lambda: train(plain),
        ("roiops deform_roi_pool", "train"): lambda: train(deform, offset),
    }


def main(argv=None) -> list[dict]:
    libraries = ("torchvision roi_align", "roiops roi_align", "roiops deform_roi_pool")
    return bench.side_benchmark(
        __doc__.splitlines()[0], "deform_roi_pool against aligned RoIAlign, float32, 7x7",
        CASES, calls, libraries, ("torchvision roi_align", "roiops deform_roi_pool"), argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
