"""Tensors beyond 2**31 elements index correctly (int64 offsets). ~17 GB of RAM: slow."""

import pytest
import torch

import roiops

pytestmark = pytest.mark.slow


def test_beyond_int32_offsets():
    # 2 * 32769 * 32768 > 2**31 elements; each [H, W] plane stays int32-indexable,
    # as roi_pool's argmax requires. The bottom-right corner is past any int32 offset.
    x = torch.zeros(1, 2, 32769, 32768)
    patch = torch.randn(1, 2, 8, 8)
    x[..., -8:, -8:] = patch
    corner = 32768 - 8
    # bins of exactly 2 cells and samples on quarter cells: float32-exact far from 0
    box = torch.tensor([[0, corner + 1.0, corner + 1.5, corner + 7.0, corner + 7.5]])
    local = box.clone()
    local[0, 1::2] -= corner
    local[0, 2::2] -= corner + 1
    for mode in ("avg", "max"):
        expected = roiops.roi_align(patch, local, 3, 1.0, 2, True, mode)
        assert torch.equal(roiops.roi_align(x, box, 3, 1.0, 2, True, mode), expected)
    assert torch.equal(roiops.roi_pool(x, box, 3), roiops.roi_pool(patch, local, 3))
    del x  # the gradient alone is another 8.6 GB: call the backward op directly
    grad = torch.ones(1, 2, 3, 3)
    big = torch.ops.roiops.roi_align_backward(grad, box, 1.0, 3, 3, 2, True, 1, 2, 32769, 32768)
    small = torch.ops.roiops.roi_align_backward(grad, local, 1.0, 3, 3, 2, True, 1, 2, 8, 8)
    assert torch.equal(big[..., -8:, -8:], small)
    assert float(big.sum()) == float(small.sum())
