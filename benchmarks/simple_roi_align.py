"""PointRend's RoI pooling: ``roiops.simple_roi_align`` and ``roiops.roi_point_sample``
against mmcv's formulations in torch (``roiops.bench.mmcv_simple_roi_align``,
``mmcv_roi_point_sample``: the points through normalised coordinates into
``grid_sample``, image by image), forward and forward+backward.

mmcv's ``SimpleRoIAlign`` and mmdet's PointRend point features are these formulations (no
kernel of their own), so the comparison is like for like without mmcv installed. The
cases are mmdet's PointRend mask head: 14 x 14 bins from the stride-4 level of an 800 x
1344 batch of two, 256 channels (``simple``), and its point head's 196 random points a
RoI (``points``; PointRend trains on 14 * 14 points sampled by uncertainty). Not part of
``roiops bench``.

Run: ``python benchmarks/simple_roi_align.py [--device cuda] [--json PATH]``.
"""

from __future__ import annotations

import torch

import roiops
from roiops import bench

CASES = {  # name: op, (N, C, H, W), RoIs, box sides (px), spatial_scale
    "cpu": [("simple", "simple", (2, 256, 200, 336), 256, (16, 600), 1 / 4),
            ("points", "points", (2, 256, 200, 336), 256, (16, 600), 1 / 4)],
    "cuda": [("simple", "simple", (2, 256, 200, 336), 256, (16, 600), 1 / 4),
             ("simple x4", "simple", (2, 256, 200, 336), 1024, (16, 600), 1 / 4),
             ("points x4", "points", (2, 256, 200, 336), 1024, (16, 600), 1 / 4)],
}  # fmt: skip


def calls(op, shape, num_rois, box_px, scale, device):
    """{(library, direction): callable} on one case's inputs (boxes sorted by image, as
    mmdet's are, where mmcv's rows are in RoI order)."""
    case = bench.Case("pointrend", "roi_align", shape, num_rois, box_px, scale, 14)
    (level,) = bench.make_inputs(case, device, torch.float32)
    x, rois, grad = level.x, level.rois, level.grad
    rois = rois[torch.argsort(rois[:, 0], stable=True)]
    g = torch.Generator().manual_seed(0)
    points = torch.rand((num_rois, 196, 2), generator=g).to(device)

    grad = grad.flatten(2) if op == "points" else grad  # (196 points: 14 x 14 bins)

    def train(fn):
        leaf = x.detach().requires_grad_()
        torch.autograd.grad(fn(leaf), [leaf], grad)

    def mmcv(t):
        if op == "points":
            return bench.mmcv_roi_point_sample(t, rois, points, scale)
        return bench.mmcv_simple_roi_align(t, rois, 14, scale)

    def ours(t):
        if op == "points":
            return roiops.roi_point_sample(t, rois, points, scale)
        return roiops.simple_roi_align(t, rois, 14, scale)

    return {
        ("mmcv formulation", "forward"): lambda: mmcv(x),
        ("roiops", "forward"): lambda: ours(x),
        ("mmcv formulation", "train"): lambda: train(mmcv),
        ("roiops", "train"): lambda: train(ours),
    }


def main(argv=None) -> list[dict]:
    return bench.side_benchmark(
        __doc__.splitlines()[0], "PointRend's pooling against mmcv's formulations, float32",
        CASES, calls, ("mmcv formulation", "roiops"), ("mmcv formulation", "roiops"), argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
