"""``roiops.mmcv``: mmcv.ops' RoI layers with mmcv's signatures and defaults, against mmcv's
own stored results (max mode) and against roiops' functions under mmcv's conventions."""

import json
import pathlib

import numpy as np
import pytest
import torch
from conftest import as_tensor, random_rois
from test_roi_align_rotated import rotated_rois

import roiops
from roiops import mmcv

MMCV_ROI_ALIGN = json.loads(
    (pathlib.Path(__file__).parent / "data" / "mmcv_roi_align.json").read_text()
)["cases"]


@pytest.mark.parametrize("case", range(0, len(MMCV_ROI_ALIGN), 3))
def test_roi_align_module_gives_mmcv_s_max_pool_mode(case):
    # mmcv's RoIAlign(..., pool_mode="max") results stored from its CPU kernel (see
    # tests/test_roi_align.py), through mmcv's own signature
    c = MMCV_ROI_ALIGN[case]
    dtype = getattr(torch, c["dtype"])
    x, rois, grad = (torch.tensor(c[key], dtype=dtype) for key in ("input", "rois", "grad_output"))
    layer = mmcv.RoIAlign(c["output_size"], c["spatial_scale"], c["sampling_ratio"], "max",
                          c["aligned"])  # fmt: skip
    leaf = x.clone().requires_grad_()
    out = layer(leaf, rois)
    out.backward(grad)
    assert torch.equal(out, torch.tensor(c["output"], dtype=dtype))
    assert torch.equal(leaf.grad, torch.tensor(c["grad_input"], dtype=dtype))


def test_mmcv_defaults_are_mmcv_s(rng):
    x = as_tensor(rng.standard_normal((2, 4, 10, 12)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 6, 20, 24), torch.float32)
    # RoIAlign: adaptive sampling, aligned, average (roiops' defaults are torchvision's)
    assert torch.equal(mmcv.RoIAlign(3, 0.5)(x, rois), roiops.roi_align(x, rois, 3, 0.5, 0, True))
    assert torch.equal(mmcv.roi_align(x, rois, 3, 0.5), mmcv.RoIAlign(3, 0.5)(x, rois))
    assert not torch.equal(mmcv.RoIAlign(3, 0.5)(x, rois), roiops.RoIAlign(3, 0.5, -1)(x, rois))
    assert torch.equal(mmcv.RoIPool(3, 0.5)(x, rois), roiops.roi_pool(x, rois, 3, 0.5))
    # RoIAlignRotated: radians (roiops' RoIAlignRotated reads degrees, as detectron2)
    rotated = as_tensor(rotated_rois(rng, 2, 6, 20, 24, degrees=False), torch.float32)
    expected = roiops.roi_align_rotated(x, rotated, 3, 0.5, 0, True, "radians")
    assert torch.equal(mmcv.RoIAlignRotated(3, 0.5)(x, rotated), expected)
    assert torch.equal(mmcv.roi_align_rotated(x, rotated, 3, 0.5), expected)
    old = mmcv.RoIAlignRotated(out_size=3, spatial_scale=0.5, sample_num=2, clockwise=True)
    assert torch.equal(
        old(x, rotated), roiops.roi_align_rotated(x, rotated, 3, 0.5, 2, True, "radians", True)
    )
    assert "sampling_ratio=2" in repr(old) and "pool_mode=avg" in repr(mmcv.RoIAlign(3))
    # PrRoIPool, deform_roi_pool: roiops' own (mmcv's numbers: tests/test_prroi_pool.py,
    # tests/test_deform_roi_pool.py)
    assert torch.equal(
        mmcv.PrRoIPool((3, 2), 0.5)(x, rois), roiops.prroi_pool(x, rois, (3, 2), 0.5)
    )
    assert torch.equal(mmcv.prroi_pool(x, rois, 3), roiops.PrRoIPool2D(3, 3, 1.0)(x, rois))
    assert torch.equal(mmcv.DeformRoIPool(3, 0.5)(x, rois), mmcv.roi_align(x, rois, 3, 0.5))


def test_mmcv_roi_align_with_torchvision_averages_whatever_its_pool_mode(rng):
    # mmcv's RoIAlign(use_torchvision=True) calls torchvision's roi_align, which has no
    # max: pool_mode is not read
    x = as_tensor(rng.standard_normal((2, 4, 10, 12)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 6, 20, 24), torch.float32)
    layer = mmcv.RoIAlign(3, 0.5, 2, "max", True, use_torchvision=True)
    assert torch.equal(layer(x, rois), roiops.roi_align(x, rois, 3, 0.5, 2, True))
    assert not torch.equal(layer(x, rois), mmcv.RoIAlign(3, 0.5, 2, "max", True)(x, rois))


def test_mmcv_bad_arguments():
    with pytest.raises(TypeError, match="output_size and out_size"):
        mmcv.RoIAlignRotated(3, 0.5, out_size=3)
    with pytest.raises(TypeError, match="spatial_scale is required"):
        mmcv.RoIAlignRotated(out_size=3)
    with pytest.raises(ValueError, match="pool_mode must be 'avg' or 'max'"):
        mmcv.RoIAlign(3, pool_mode="sum")
    with pytest.raises(ValueError, match="pool_mode must be 'avg' or 'max'"):
        mmcv.roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(0, 5), 2, pool_mode="mean")
    with pytest.raises(TypeError, match="sampling_ratio must be an integer"):
        mmcv.RoIAlign(2, 0.5, 2.5)(torch.zeros(1, 1, 4, 4), torch.zeros(0, 5))


def test_mmcv_layers_are_leaves_under_fx(rng):
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.align = mmcv.RoIAlign(2, 0.5, pool_mode="max")
            self.rotated = mmcv.RoIAlignRotated(2, 0.5, 2)

        def forward(self, x, rois, rotated):
            return torch.cat([self.align(x, rois), self.rotated(x, rotated)])

    x = torch.from_numpy(rng.standard_normal((1, 2, 8, 8)).astype(np.float32))
    rois = torch.tensor([[0, 1.0, 1, 6, 7]])
    rotated = torch.tensor([[0, 4.0, 4, 5, 3, 0.3]])
    traced = torch.fx.symbolic_trace(Head())
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert {mmcv.roi_align, mmcv.roi_align_rotated} <= targets
    assert torch.equal(traced(x, rois, rotated), Head()(x, rois, rotated))
