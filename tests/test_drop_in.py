"""roiops.patch(): torchvision's RoI ops, modules and an unmodified Mask R-CNN on roiops."""

import sys

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import maskrcnn_resnet50_fpn

import roiops
import roiops.nn


@pytest.fixture
def patched():
    roiops.patch()
    try:
        yield
    finally:
        roiops.unpatch()


def test_patch_replaces_functions_and_forwards_and_unpatch_restores(rng):
    import torchvision.ops.poolers as poolers

    originals = (torchvision.ops.roi_align, poolers.roi_align, torchvision.ops.RoIAlign.forward)
    x = torch.randn(2, 8, 10, 12)
    rois = torch.tensor([[0, 1.0, 2, 15, 17], [1, 3, 3, 9, 9]])
    module = torchvision.ops.RoIAlign(3, 0.5, 2, True)  # built before the patch
    roiops.patch()
    roiops.patch()  # idempotent
    try:
        assert roiops.is_patched()
        assert torchvision.ops.roi_align is roiops.roi_align
        assert poolers.roi_align is roiops.roi_align  # what MultiScaleRoIAlign calls
        assert sys.modules["torchvision.ops.roi_align"].roi_align is roiops.roi_align
        assert torchvision.ops.ps_roi_pool is roiops.ps_roi_pool
        assert torch.equal(module(x, rois), roiops.roi_align(x, rois, 3, 0.5, 2, True))
    finally:
        roiops.unpatch()
    assert not roiops.is_patched()
    assert (torchvision.ops.roi_align, poolers.roi_align, torchvision.ops.RoIAlign.forward) == (
        originals
    )


def test_patched_modules_give_torchvision_numbers(patched):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 10, 12, generator=g)
    rois = torch.tensor([[0, 1.0, 2, 15, 17], [1, 3, 3, 9, 9], [0, -2, 4, 30, 12]])
    modules = [
        torchvision.ops.RoIAlign(3, 0.5, 2, False),
        torchvision.ops.RoIPool((2, 3), 0.5),
        torchvision.ops.PSRoIAlign(2, 0.5, 2),
        torchvision.ops.PSRoIPool(2, 0.5),
    ]
    outs = [m(x, rois) for m in modules]
    roiops.unpatch()
    for module, out in zip(modules, outs, strict=True):
        assert torch.equal(out, module(x, rois)), module
    roiops.patch()
    fpn = torchvision.ops.MultiScaleRoIAlign(["0", "1"], 3, 2)
    features = {"0": torch.randn(2, 4, 16, 20, generator=g), "1": torch.randn(2, 4, 8, 10)}
    boxes = [torch.tensor([[1.0, 2, 50, 40], [3, 3, 9, 9]]), torch.tensor([[0.0, 0, 63, 79]])]
    ours = fpn(features, boxes, [(64, 80), (60, 70)])
    roiops.unpatch()
    assert torch.equal(ours, fpn(features, boxes, [(64, 80), (60, 70)]))


def _mask_rcnn_inputs():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 200, 260, generator=g), torch.rand(3, 180, 240, generator=g)]
    sizes = [(200, 260), (180, 240)]
    boxes = [
        torch.tensor([[20.0, 30, 120, 150], [60, 40, 200, 170]]),
        torch.tensor([[10.0, 10, 100, 90]]),
    ]
    targets = []
    for (h, w), b, labels in zip(sizes, boxes, [[1, 3], [2]], strict=True):
        masks = torch.zeros(len(b), h, w, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(b.int().tolist()):
            masks[i, y1:y2, x1:x2] = 1
        targets.append({"boxes": b, "labels": torch.tensor(labels), "masks": masks})
    return images, targets


def test_unmodified_mask_rcnn_same_detections_and_losses(monkeypatch):
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=224, max_size=320
    )
    images, targets = _mask_rcnn_inputs()
    pyramid_calls = []
    pool_pyramid = roiops.nn.pool_pyramid

    def counted(*args, **kwargs):
        pyramid_calls.append(1)
        return pool_pyramid(*args, **kwargs)

    monkeypatch.setattr(roiops.nn, "pool_pyramid", counted)

    def run(train):
        model.train(train)
        torch.manual_seed(5)  # the RPN and RoI heads sample proposals at random
        if train:
            losses = model(images, targets)
            model.zero_grad()
            sum(losses.values()).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            return {k: v.detach() for k, v in losses.items()}, grads
        with torch.no_grad():
            return model(images), None

    def on_roiops(train):
        roiops.patch()
        try:
            return run(train)
        finally:
            roiops.unpatch()

    # each phase on torchvision then on roiops, from the same model state: without
    # pretrained weights the backbone has plain BatchNorm2d, whose running statistics a
    # training forward updates (and with them what the next eval call detects)
    torchvision_eval, _ = run(False)
    assert not pyramid_calls
    roiops_eval, _ = on_roiops(False)
    torchvision_losses, torchvision_grads = run(True)
    roiops_losses, roiops_grads = on_roiops(True)
    assert len(pyramid_calls) == 4  # box and mask poolers, in eval and in training
    assert all(len(d["boxes"]) > 0 for d in torchvision_eval)
    for ours, theirs in zip(roiops_eval, torchvision_eval, strict=True):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key])
    assert roiops_losses.keys() == torchvision_losses.keys()
    for key in torchvision_losses:
        torch.testing.assert_close(roiops_losses[key], torchvision_losses[key])
    # the backward sums in another order than torchvision's: equal up to float rounding
    assert roiops_grads.keys() == torchvision_grads.keys()
    for name in torchvision_grads:
        torch.testing.assert_close(
            roiops_grads[name], torchvision_grads[name], rtol=1e-4, atol=1e-5, msg=name
        )


@pytest.mark.slow  # (~38 s: two exports of the model; the pooler's own export is in
# test_onnx.py's default run, test_pyramid_pooler_exports_as_roi_align_per_level)
def test_patched_mask_rcnn_exports_to_onnx_as_torchvision_s_does():
    # torchvision's detection models export with the TorchScript exporter; patched, the
    # FPN poolers export through roiops (RoiAlign per level, a gather) and onnxruntime
    # gives the same detections as torchvision's own export of the same model
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    import io
    import warnings

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=224, max_size=320
    ).eval()
    image = _mask_rcnn_inputs()[0][0]

    def run_exported(patched):
        buffer = io.BytesIO()
        if patched:
            roiops.patch()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, ([image],), buffer, dynamo=False, opset_version=16)
        finally:
            roiops.unpatch()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # torchvision's graph trips a shape warning per mask
        session = onnxruntime.InferenceSession(buffer.getvalue(), options)
        graph = onnx.load_from_string(buffer.getvalue()).graph
        assert sum(n.op_type == "RoiAlign" for n in graph.node) == 8  # 4 levels x 2 poolers
        return session.run(None, {session.get_inputs()[0].name: image.numpy()})

    theirs = run_exported(False)
    ours = run_exported(True)
    assert len(ours) == len(theirs) == 4  # boxes, labels, scores, masks
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
