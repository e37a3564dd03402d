"""``roiops.deform_ps_roi_pool`` (Deformable ConvNets' own RoI pooling) against its
original kernel written out in torch (``roiops.bench.dcn_deform_ps_roi_pool``: every
sample of every output gathered at once, autograd for the gradients), forward and
forward+backward.

The original's compiled kernels (mmdetection 1.x's, DCNv2's) are CUDA extensions that no
package installs any more, so the anchor here is that formulation in torch, as a user
without them would write it; the ratio is not against the original CUDA kernel. Cases:
plain deformable pooling over an FPN level (mmdetection 1.x's ``dpool`` configs: 7 x 7,
4 x 4 samples a bin, one offset head) and Deformable R-FCN's position-sensitive pooling
(21 classes' 7 x 7 score maps at stride 16). Not part of ``roiops bench``.

Run: ``python benchmarks/deform_ps_roi_pool.py [--device cuda] [--json PATH]``.
"""

from __future__ import annotations

import torch

import roiops
from roiops import bench

CASES = {  # name: (N, C, H, W), RoIs, box sides (px), spatial_scale, group_size
    "cpu": [("dpool", (2, 256, 100, 136), 128, (16, 200), 1 / 8, 1),
            ("rfcn", (1, 21 * 49, 38, 50), 300, (32, 500), 1 / 16, 7)],
    "cuda": [("dpool", (2, 256, 200, 272), 512, (16, 400), 1 / 4, 1),
             ("rfcn", (1, 21 * 49, 38, 50), 300, (32, 500), 1 / 16, 7)],
}  # fmt: skip


def calls(shape, num_rois, box_px, scale, group, device):
    """{(library, direction): callable} on one case's inputs."""
    case = bench.Case("deform_ps", "roi_align", shape, num_rois, box_px, scale, 7, 4)
    (level,) = bench.make_inputs(case, device, torch.float32)
    x, rois = level.x, level.rois
    g = torch.Generator().manual_seed(0)
    # a trained offset head's moves: a tenth of a RoI or so (trans_std 0.1 times ~1)
    offset = torch.randn((num_rois, 2, 7, 7), generator=g).to(device)
    grad = torch.randn((num_rois, shape[1] // group**2, 7, 7), generator=g).to(device)

    def ours(t, o):
        return roiops.deform_ps_roi_pool(t, rois, o, 7, scale, group, None, 4, 0.1)

    def theirs(t, o):
        return bench.dcn_deform_ps_roi_pool(t, rois, o, scale, 7, group, None, 4, 0.1)

    def train(fn):
        leaves = [x.detach().requires_grad_(), offset.detach().requires_grad_()]
        torch.autograd.grad(fn(*leaves), leaves, grad)

    return {
        ("original in torch", "forward"): lambda: theirs(x, offset),
        ("roiops", "forward"): lambda: ours(x, offset),
        ("original in torch", "train"): lambda: train(theirs),
        ("roiops", "train"): lambda: train(ours),
    }


def main(argv=None) -> list[dict]:
    libraries = ("original in torch", "roiops")
    return bench.side_benchmark(
        __doc__.splitlines()[0], "deform_ps_roi_pool, float32, 7x7, 4x4 samples a bin", CASES,
        calls, libraries, libraries, argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
