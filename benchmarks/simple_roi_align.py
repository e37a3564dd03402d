"""PointRend's RoI pooling: ``roiops.simple_roi_align`` against mmcv's ``SimpleRoIAlign``
formulation in torch (``roiops.bench.mmcv_simple_roi_align``: the bins' centres through
normalised coordinates into ``grid_sample``, image by image), forward and
forward+backward.

mmcv's layer is this formulation (no kernel of its own), so the comparison is like for
like without mmcv installed. The case is mmdet's PointRend mask head: 14 x 14 bins from
the stride-4 level of an 800 x 1344 batch of two, 256 channels. Not part of ``roiops
bench``.

Run: ``python benchmarks/simple_roi_align.py [--device cuda] [--json PATH]``.
"""

from __future__ import annotations

import torch

import roiops
from roiops import bench

CASES = {  # name: (N, C, H, W), RoIs, box sides (px), spatial_scale
    "cpu": [("pointrend", (2, 256, 200, 336), 256, (16, 600), 1 / 4)],
    "cuda": [("pointrend", (2, 256, 200, 336), 256, (16, 600), 1 / 4),
             ("pointrend x4", (2, 256, 200, 336), 1024, (16, 600), 1 / 4)],
}  # fmt: skip


def calls(shape, num_rois, box_px, scale, device):
    """{(library, direction): callable} on one case's inputs (boxes sorted by image, as
    mmdet's are, where mmcv's rows are in RoI order)."""
    case = bench.Case("pointrend", "roi_align", shape, num_rois, box_px, scale, 14)
    (level,) = bench.make_inputs(case, device, torch.float32)
    x, rois, grad = level.x, level.rois, level.grad
    rois = rois[torch.argsort(rois[:, 0], stable=True)]

    def train(fn):
        leaf = x.detach().requires_grad_()
        torch.autograd.grad(fn(leaf), [leaf], grad)

    def mmcv(t):
        return bench.mmcv_simple_roi_align(t, rois, 14, scale)

    def ours(t):
        return roiops.simple_roi_align(t, rois, 14, scale)

    return {
        ("mmcv formulation", "forward"): lambda: mmcv(x),
        ("roiops", "forward"): lambda: ours(x),
        ("mmcv formulation", "train"): lambda: train(mmcv),
        ("roiops", "train"): lambda: train(ours),
    }


def main(argv=None) -> None:
    bench.side_benchmark(
        __doc__.splitlines()[0], "simple_roi_align against mmcv's formulation, float32, 14x14",
        CASES, calls, ("mmcv formulation", "roiops"), ("mmcv formulation", "roiops"), argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
