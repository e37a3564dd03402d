"""What turning the orientations costs: ``roiops.riroi_align_rotated`` (ReDet) against
roiops' rotated RoIAlign of the same boxes in the same convention (mmcv's: radians, not
aligned), forward and forward+backward.

mmcv's RiRoIAlignRotated runs on CUDA only and torchvision has no rotated pooling, so
there is no like-for-like anchor here; roiops computes the op as that rotated RoIAlign
followed by a per-RoI turn of the orientation channels (two gathers over the output),
and the figure is what the turn adds. Not part of ``roiops bench``.

Run: ``python benchmarks/riroi_align_rotated.py [--device cuda] [--json PATH]``.
"""

from __future__ import annotations

import math

import torch

import roiops
from roiops import bench

CASES = {  # name: (N, C, H, W), RoIs, box sides (px), spatial_scale, sampling_ratio
    # (ReDet: 256 channels as 32 groups of 8 orientations, num_samples=2, 7x7)
    "cpu": [("redet p3", (2, 256, 100, 136), 512, (16, 200), 1 / 8, 2)],
    "cuda": [("redet p2", (2, 256, 200, 272), 1000, (16, 400), 1 / 4, 2)],
}


def calls(shape, num_rois, box_px, scale, ratio, device):
    """{(op, direction): callable} on one case's inputs."""
    case = bench.Case("redet", "roi_align", shape, num_rois, box_px, scale, 7, ratio)
    (level,) = bench.make_inputs(case, device, torch.float32)
    x, boxes, grad = level.x, level.rois, level.grad
    g = torch.Generator().manual_seed(0)
    angle = (torch.rand((num_rois, 1), generator=g) * 4 - 2) * math.pi
    corners = boxes[:, 1:]
    rois = torch.cat(
        [boxes[:, :1], (corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2],
         angle.to(device)], 1,
    )  # fmt: skip

    def train(fn):
        leaf = x.detach().requires_grad_()
        torch.autograd.grad(fn(leaf), [leaf], grad)

    def rotated(t):
        return roiops.roi_align_rotated(t, rois, 7, scale, ratio, False, "radians", True)

    def invariant(t):
        return roiops.riroi_align_rotated(t, rois, 7, scale, ratio, 8, True)

    return {
        ("roi_align_rotated", "forward"): lambda: rotated(x),
        ("riroi_align_rotated", "forward"): lambda: invariant(x),
        ("roi_align_rotated", "train"): lambda: train(rotated),
        ("riroi_align_rotated", "train"): lambda: train(invariant),
    }


def main(argv=None) -> list[dict]:
    return bench.side_benchmark(
        __doc__.splitlines()[0], "riroi_align_rotated against roi_align_rotated, float32, 7x7",
        CASES, calls, ("roi_align_rotated", "riroi_align_rotated"),
        ("riroi_align_rotated", "roi_align_rotated"), argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
