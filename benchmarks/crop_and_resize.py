"""``roiops.crop_and_resize`` (TensorFlow's ``tf.image.crop_and_resize``) against
TensorFlow's kernel written out in torch (``roiops.bench.tf_crop_and_resize``: every
sample of every crop gathered at once, autograd for the image's and the boxes'
gradients), forward and forward+backward.

TensorFlow is not a dependency, so the anchor is its kernel in torch, as a user porting a
TensorFlow detector would write it; the ratio is not against TensorFlow's own kernel.
Cases: matterport's Mask R-CNN, whose ``PyramidROIAlign`` crops each RoI from one FPN
level, at its classifier's 7 x 7 and its mask head's 14 x 14 (200 RoIs, a 256-channel
level at stride 8 of a 1024 x 1024 image). Not part of ``roiops bench``.

Run: ``python benchmarks/crop_and_resize.py [--device cuda] [--json PATH]``.
"""

from __future__ import annotations

import torch

import roiops
from roiops import bench

CASES = {  # name: (N, C, H, W), boxes, crop size
    "cpu": [("mrcnn 7x7", (2, 256, 128, 128), 200, 7),
            ("mrcnn 14x14", (2, 256, 128, 128), 200, 14)],
    "cuda": [("mrcnn 7x7", (2, 256, 128, 128), 1000, 7),
             ("mrcnn 14x14", (2, 256, 128, 128), 1000, 14)],
}  # fmt: skip


def calls(shape, num_boxes, size, device):
    """{(library, direction): callable} on one case's inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device)
    corner = torch.rand(num_boxes, 2, generator=g) * 0.8
    side = torch.rand(num_boxes, 2, generator=g) * 0.4 + 0.02
    boxes = torch.cat([corner, corner + side], 1).to(device)  # (y1, x1, y2, x2)
    indices = torch.randint(0, shape[0], (num_boxes,), generator=g).to(device)
    grad = torch.randn(num_boxes, shape[1], size, size, generator=g).to(device)

    def ours(t, b):
        return roiops.crop_and_resize(t, b, indices, size)

    def theirs(t, b):
        return bench.tf_crop_and_resize(t, b, indices, (size, size))

    def train(fn):
        leaves = [x.detach().requires_grad_(), boxes.detach().requires_grad_()]
        torch.autograd.grad(fn(*leaves), leaves, grad)

    return {
        ("tensorflow's in torch", "forward"): lambda: theirs(x, boxes),
        ("roiops", "forward"): lambda: ours(x, boxes),
        ("tensorflow's in torch", "train"): lambda: train(theirs),
        ("roiops", "train"): lambda: train(ours),
    }


def main(argv=None) -> list[dict]:
    libraries = ("tensorflow's in torch", "roiops")
    return bench.side_benchmark(
        __doc__.splitlines()[0], "crop_and_resize, float32, bilinear", CASES, calls, libraries,
        libraries, argv,
    )  # fmt: skip


if __name__ == "__main__":
    main()
