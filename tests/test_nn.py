"""nn.Module wrappers: torchvision's constructor arguments, repr and results."""

import torch
import torchvision

import roiops


def test_roi_align_module_matches_torchvision():
    ours = roiops.RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    theirs = torchvision.ops.RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True)
    assert repr(ours) == repr(theirs)
    x = torch.randn(2, 4, 16, 16)
    boxes = [torch.tensor([[1.0, 2, 40, 50]]), torch.tensor([[0.0, 0, 63, 63], [5, 5, 9, 9]])]
    assert torch.equal(ours(x, boxes), theirs(x, boxes))
    assert "mode='max'" in repr(roiops.RoIAlign(7, 0.25, 2, mode="max"))


def test_roi_pool_module_matches_torchvision():
    ours = roiops.RoIPool(7, spatial_scale=0.25)
    theirs = torchvision.ops.RoIPool(7, spatial_scale=0.25)
    assert repr(ours) == repr(theirs)
    x = torch.randn(1, 4, 16, 16)
    rois = torch.tensor([[0, 1.0, 2, 40, 50]])
    assert torch.equal(ours(x, rois), theirs(x, rois))
