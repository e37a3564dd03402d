"""roiops.patch(): torchvision's RoI ops, modules and an unmodified Mask R-CNN on roiops."""

import importlib.util
import pathlib
import sys
import textwrap
import types

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
    import inspect

    import torchvision.ops.poolers as poolers

    originals = (torchvision.ops.roi_align, poolers.roi_align, torchvision.ops.RoIAlign.forward)
    signatures = {name: inspect.signature(getattr(torchvision.ops, name)) for name in TV_FUNCTIONS}
    x = torch.randn(2, 8, 10, 12)
    rois = torch.tensor([[0, 1.0, 2, 15, 17], [1, 3, 3, 9, 9]])
    module = torchvision.ops.RoIAlign(3, 0.5, 2, True)  # built before the patch
    roiops.patch()
    roiops.patch()  # idempotent
    try:
        assert roiops.is_patched()
        ours = roiops._patch.roi_align
        assert torchvision.ops.roi_align is ours
        assert poolers.roi_align is ours  # what MultiScaleRoIAlign calls
        assert sys.modules["torchvision.ops.roi_align"].roi_align is ours
        assert torchvision.ops.ps_roi_pool is roiops._patch.ps_roi_pool
        assert torch.equal(module(x, rois), roiops.roi_align(x, rois, 3, 0.5, 2, True))
        assert torch.equal(ours(x, rois, 3, 0.5, 2, True), module(x, rois))
        # torchvision's signatures, parameter for parameter: mmcv's RoIAlign(
        # use_torchvision=True) reads roi_align.__code__.co_varnames for "aligned" and,
        # not finding it, shifts the caller's boxes in place and calls without it
        for name, signature in signatures.items():
            replaced = inspect.signature(getattr(torchvision.ops, name))
            assert [(p.name, p.default) for p in replaced.parameters.values()] == [
                (p.name, p.default) for p in signature.parameters.values()
            ], name
        assert "aligned" in torchvision.ops.roi_align.__code__.co_varnames
    finally:
        roiops.unpatch()
    assert not roiops.is_patched()
    assert (torchvision.ops.roi_align, poolers.roi_align, torchvision.ops.RoIAlign.forward) == (
        originals
    )


BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"
TV_FUNCTIONS = ("roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool")


def stand_in(monkeypatch, name, source=""):
    """Module ``name`` in ``sys.modules`` (until the test ends), ``source`` run in it (so
    its functions read their globals from it, as a library's module's do)."""
    module = types.ModuleType(name)
    exec(textwrap.dedent(source), module.__dict__)
    monkeypatch.setitem(sys.modules, name, module)
    parent, _, child = name.rpartition(".")
    if parent:
        monkeypatch.setattr(sys.modules[parent], child, module, raising=False)
    return module


def test_patch_reaches_every_module_that_imported_torchvision_s_functions(monkeypatch):
    user = stand_in(monkeypatch, "user_detector", """
        from torchvision.ops import roi_align, roi_pool as tv_roi_pool
        from torchvision.ops import nms
    """)  # fmt: skip
    nms = user.nms
    roiops.patch()
    try:
        assert user.roi_align is roiops._patch.roi_align
        assert user.tv_roi_pool is roiops._patch.roi_pool
        assert user.nms is nms  # (not a RoI op: left alone)
    finally:
        roiops.unpatch()
    assert user.roi_align is torchvision.ops.roi_align
    assert user.tv_roi_pool is torchvision.ops.roi_pool


# detectron2 is not installable here (no wheels on the package index): stand-ins with
# the module layout, attributes and forwards of its layers and pooler (detectron2 0.6,
# detectron2/layers/roi_align.py, roi_align_rotated.py, modeling/poolers.py), written
# for these tests; a forward that needs detectron2's C++ extension raises
DETECTRON2_LAYERS = """
    import torch
    from torch import nn
    from torchvision.ops import roi_align

    class ROIAlign(nn.Module):
        def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):
            super().__init__()
            self.output_size = output_size
            self.spatial_scale = spatial_scale
            self.sampling_ratio = sampling_ratio
            self.aligned = aligned

        def forward(self, input, rois):
            return roi_align(input, rois.to(dtype=input.dtype), self.output_size,
                             self.spatial_scale, self.sampling_ratio, self.aligned)

    class ROIAlignRotated(nn.Module):
        def __init__(self, output_size, spatial_scale, sampling_ratio):
            super().__init__()
            self.output_size = output_size
            self.spatial_scale = spatial_scale
            self.sampling_ratio = sampling_ratio

        def forward(self, input, rois):
            raise RuntimeError("detectron2's C++ extension is not built here")
"""
DETECTRON2_POOLERS = """
    import math

    import torch
    from torch import nn
    from torchvision.ops import RoIPool

    from detectron2.layers import ROIAlign, ROIAlignRotated

    class ROIPooler(nn.Module):
        def __init__(self, output_size, scales, sampling_ratio, pooler_type,
                     canonical_box_size=224, canonical_level=4):
            super().__init__()
            if isinstance(output_size, int):
                output_size = (output_size, output_size)
            self.output_size = output_size
            if pooler_type in ("ROIAlign", "ROIAlignV2"):
                aligned = pooler_type == "ROIAlignV2"
                poolers = [ROIAlign(output_size, s, sampling_ratio, aligned) for s in scales]
            elif pooler_type == "ROIPool":
                poolers = [RoIPool(output_size, spatial_scale=s) for s in scales]
            else:
                poolers = [ROIAlignRotated(output_size, s, sampling_ratio) for s in scales]
            self.level_poolers = nn.ModuleList(poolers)
            self.min_level = int(-math.log2(scales[0]))
            self.max_level = int(-math.log2(scales[-1]))
            self.canonical_level = canonical_level
            self.canonical_box_size = canonical_box_size

        def forward(self, x, box_lists):
            rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1)
                              for i, b in enumerate(box_lists)])
            if len(self.level_poolers) == 1:
                return self.level_poolers[0](x[0], rois)
            boxes = torch.cat(list(box_lists))
            if boxes.shape[1] == 5:
                area = boxes[:, 2] * boxes[:, 3]
            else:
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            level = torch.floor(self.canonical_level
                                + torch.log2(torch.sqrt(area) / self.canonical_box_size + 1e-8))
            level = torch.clamp(level, self.min_level, self.max_level).long() - self.min_level
            size = self.output_size[0]
            out = torch.zeros((len(rois), x[0].shape[1], size, size), dtype=x[0].dtype)
            for index, pooler in enumerate(self.level_poolers):
                pick = torch.nonzero(level == index)[:, 0]
                out[pick] = pooler(x[index], rois[pick])
            return out
"""


@pytest.fixture
def detectron2(monkeypatch):
    stand_in(monkeypatch, "detectron2")
    layers = stand_in(monkeypatch, "detectron2.layers", DETECTRON2_LAYERS)
    stand_in(monkeypatch, "detectron2.modeling")
    return layers, stand_in(monkeypatch, "detectron2.modeling.poolers", DETECTRON2_POOLERS)


def detectron2_inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 4, 64 // 2**i, 64 // 2**i, generator=g).to(dtype)
                for i in range(4)]  # fmt: skip
    # sides from 8 to 600 px: every level gets boxes; corners off float16's grid
    corner = torch.rand(30, 2, generator=g) * 200 + 0.3
    side = torch.exp(torch.rand(30, 2, generator=g) * 4.3 + 2.1)
    boxes = torch.cat([corner, corner + side], 1)
    return features, [boxes[:18], boxes[18:]]


@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIAlignV2", "ROIPool"])
def test_patch_pools_detectron2_s_pooler_in_one_launch_with_its_numbers(
    detectron2, monkeypatch, pooler_type
):
    layers, poolers = detectron2
    features, boxes = detectron2_inputs()
    pooler = poolers.ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, pooler_type)
    expected = pooler(features, boxes)  # detectron2's loop on torchvision
    loop = poolers.ROIPooler.forward
    calls = []
    one_launch = roiops.nn.pool_detectron2
    monkeypatch.setattr(roiops.nn, "pool_detectron2",
                        lambda *a: calls.append(a[5]) or one_launch(*a))  # fmt: skip
    roiops.patch()
    try:
        assert layers.roi_align is roiops._patch.roi_align  # (what its ROIAlign calls)
        out = pooler(features, boxes)
        assert calls == [pooler_type]
        assert torch.equal(out, expected)
        assert torch.equal(loop(pooler, features, boxes), expected)  # its loop on roiops
    finally:
        roiops.unpatch()
    assert poolers.ROIPooler.forward is loop
    assert layers.roi_align is torchvision.ops.roi_align


def test_patched_detectron2_pooler_rounds_half_precision_boxes_as_its_roi_align_does(
    detectron2,
):
    # detectron2's ROIAlign casts the boxes to the features' dtype, after its pooler has
    # mapped their levels (AMP training: float16 maps, float32 boxes)
    # (torchvision's float16 CPU kernel computes in float16, roiops in float32: the
    # expected numbers are detectron2's loop over its ROIAlign layers on roiops)
    layers, poolers = detectron2
    features, boxes = detectron2_inputs(torch.float16)
    pooler = poolers.ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, "ROIAlignV2")
    loop = poolers.ROIPooler.forward
    roiops.patch()
    try:
        expected = loop(pooler, features, boxes)
        assert torch.equal(pooler(features, boxes), expected)
    finally:
        roiops.unpatch()
    ours = roiops.ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, "ROIAlignV2")
    assert torch.equal(ours(features, boxes), expected)
    # (the float32 boxes unrounded would give other numbers: the cast is what matters)
    uncast = roiops.multi_scale_roi_align(features, boxes, 7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2,
                                          True, level_mapper="detectron2", eps=1e-8)  # fmt: skip
    assert not torch.equal(uncast, expected)


def test_patch_runs_detectron2_s_rotated_layer_and_pooler(detectron2):
    layers, poolers = detectron2
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(2, 4, 64 // 2**i, 64 // 2**i, generator=g) for i in range(4)]
    centre = torch.rand(20, 2, generator=g) * 200
    side = torch.exp(torch.rand(20, 2, generator=g) * 4.3 + 2.1)
    angle = torch.rand(20, 1, generator=g) * 360 - 180
    boxes = torch.cat([centre, side, angle], 1)
    box_lists = [boxes[:12], boxes[12:]]
    layer = layers.ROIAlignRotated((3, 4), 1 / 4, 2)
    rois = torch.cat([torch.zeros(20, 1), boxes], 1)
    pooler = poolers.ROIPooler(5, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 0, "ROIAlignRotated")
    with pytest.raises(RuntimeError, match="C\\+\\+ extension"):
        layer(features[0], rois)
    roiops.patch()
    try:
        assert torch.equal(
            layer(features[0], rois), roiops.roi_align_rotated(features[0], rois, (3, 4), 1 / 4, 2)
        )
        out = pooler(features, box_lists)
        ours = roiops.ROIPooler(5, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 0, "ROIAlignRotated")
        assert torch.equal(out, ours(features, box_lists))
    finally:
        roiops.unpatch()
    with pytest.raises(RuntimeError, match="C\\+\\+ extension"):
        layer(features[0], rois)


def test_patched_detectron2_pooler_of_other_layers_keeps_its_loop(detectron2):
    layers, poolers = detectron2
    features, boxes = detectron2_inputs()
    pooler = poolers.ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, "ROIAlignV2")
    pooler.level_poolers = torch.nn.ModuleList(
        roiops.RoIAlign(7, s, 2, True) for s in (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    )
    expected = pooler(features, boxes)
    roiops.patch()
    try:
        assert torch.equal(pooler(features, boxes), expected)
    finally:
        roiops.unpatch()


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


# mmcv's compiled ops do not install here (mmcv-lite has none; mmcv's full build does not
# compile against current torch): a stand-in of mmcv.ops with the attributes mmcv 2.x's
# layers set (mmcv/ops/roi_align.py, roi_pool.py, roi_align_rotated.py,
# riroi_align_rotated.py, prroi_pool.py, bezier_align.py, point_sample.py,
# deform_roi_pool.py), written for these tests; what needs mmcv's extension raises
MMCV_OPS = """
    from torch import nn
    from torch.nn.modules.utils import _pair

    def _no_extension(*args):
        raise RuntimeError("mmcv's compiled ops are not built here")

    def _function():
        return lambda *args: _no_extension()

    roi_align, roi_pool, roi_align_rotated, riroi_align_rotated = (_function() for _ in "1234")
    prroi_pool, bezier_align, deform_roi_pool = (_function() for _ in "123")
    original_roi_align = roi_align

    class _Layer(nn.Module):
        def forward(self, *args):
            _no_extension()

    class RoIAlign(_Layer):
        def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode="avg",
                     aligned=True, use_torchvision=False):
            super().__init__()
            self.output_size = _pair(output_size)
            self.spatial_scale = float(spatial_scale)
            self.sampling_ratio = int(sampling_ratio)
            self.pool_mode = pool_mode
            self.aligned = aligned
            self.use_torchvision = use_torchvision

    class RoIPool(_Layer):
        def __init__(self, output_size, spatial_scale=1.0):
            super().__init__()
            self.output_size = _pair(output_size)
            self.spatial_scale = float(spatial_scale)

    class PrRoIPool(RoIPool):
        pass

    class RoIAlignRotated(_Layer):
        def __init__(self, output_size, spatial_scale, sampling_ratio=0, aligned=True,
                     clockwise=False):
            super().__init__()
            self.output_size = _pair(output_size)
            self.spatial_scale = float(spatial_scale)
            self.sampling_ratio = int(sampling_ratio)
            self.aligned = aligned
            self.clockwise = clockwise

    class RiRoIAlignRotated(_Layer):
        def __init__(self, out_size, spatial_scale, num_samples=0, num_orientations=8,
                     clockwise=False):
            super().__init__()
            self.out_size = out_size
            self.spatial_scale = float(spatial_scale)
            self.num_samples = int(num_samples)
            self.num_orientations = int(num_orientations)
            self.clockwise = clockwise

    class BezierAlign(_Layer):
        def __init__(self, output_size, spatial_scale, sampling_ratio, aligned=True):
            super().__init__()
            self.output_size = _pair(output_size)
            self.spatial_scale = float(spatial_scale)
            self.sampling_ratio = int(sampling_ratio)
            self.aligned = aligned

    class SimpleRoIAlign(_Layer):
        def __init__(self, output_size, spatial_scale, aligned=True):
            super().__init__()
            self.output_size = _pair(output_size)
            self.spatial_scale = float(spatial_scale)
            self.use_torchvision = False
            self.aligned = aligned

    class DeformRoIPool(_Layer):
        def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
            super().__init__()
            self.output_size = _pair(output_size)
            self.spatial_scale = float(spatial_scale)
            self.sampling_ratio = int(sampling_ratio)
            self.gamma = float(gamma)

    def _fc(sizes):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        return layers[:-1]

    def _offset_head(layer, output_channels, deform_fc_channels):
        layer.output_channels = output_channels
        layer.deform_fc_channels = deform_fc_channels
        bins = layer.output_size[0] * layer.output_size[1]
        layer.offset_fc = nn.Sequential(*_fc(
            [bins * output_channels, deform_fc_channels, deform_fc_channels, bins * 2]))
        return bins

    class DeformRoIPoolPack(DeformRoIPool):
        def __init__(self, output_size, output_channels, deform_fc_channels=1024,
                     spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
            super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
            _offset_head(self, output_channels, deform_fc_channels)

    class ModulatedDeformRoIPoolPack(DeformRoIPool):  # (mmcv's: not a DeformRoIPoolPack)
        def __init__(self, output_size, output_channels, deform_fc_channels=1024,
                     spatial_scale=1.0, sampling_ratio=0, gamma=0.1):
            super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
            bins = _offset_head(self, output_channels, deform_fc_channels)
            self.mask_fc = nn.Sequential(
                *_fc([bins * output_channels, deform_fc_channels, bins]), nn.Sigmoid())
"""


def test_patch_runs_mmcv_s_layers_and_functions_on_roiops(monkeypatch):
    from roiops import mmcv as ours

    check = importlib.util.spec_from_file_location("patch_check", BENCHMARKS / "patch_check.py")
    patch_check = importlib.util.module_from_spec(check)
    check.loader.exec_module(patch_check)
    stand_in(monkeypatch, "mmcv")
    ops = stand_in(monkeypatch, "mmcv.ops", MMCV_OPS)
    head = stand_in(monkeypatch, "mmdet_head", "from mmcv.ops import roi_align, DeformRoIPool")
    pairs = patch_check.paired_layers(ops, torch.Generator().manual_seed(6))
    assert len(pairs) == 11  # (every layer the benchmark's check pairs)
    x, rois = pairs[0][3]
    with pytest.raises(RuntimeError, match="compiled ops"):
        pairs[0][1](x, rois)
    roiops.patch()
    try:
        for name, theirs, mine, inputs in pairs:
            assert torch.equal(theirs(*inputs), mine(*inputs)), name
        assert ops.roi_align is ours.roi_align and ops.deform_roi_pool is ours.deform_roi_pool
        assert head.roi_align is ours.roi_align and head.DeformRoIPool is ops.DeformRoIPool
        assert torch.equal(head.roi_align(x, rois, 3, 0.5), ours.RoIAlign(3, 0.5)(x, rois))
    finally:
        roiops.unpatch()
    assert head.roi_align is ops.roi_align is ops.original_roi_align
    with pytest.raises(RuntimeError, match="compiled ops"):
        pairs[0][1](x, rois)
    assert "forward" not in vars(ops.RoIAlign)  # (inherited before the patch: so again)


# mmdet 3's BaseRoIExtractor and SingleRoIExtractor (mmdet/models/roi_heads/
# roi_extractors/), written for these tests with their attributes and forward: the
# layers built from mmcv.ops by name, the levels by sqrt(area), a loop over the levels
# with a nonzero each
MMDET_EXTRACTORS = """
    import torch
    from torch import nn
    from mmcv import ops

    class BaseRoIExtractor(nn.Module):
        def __init__(self, roi_layer, out_channels, featmap_strides, finest_scale=56):
            super().__init__()
            cfg = dict(roi_layer)
            layer_cls = getattr(ops, cfg.pop("type"))
            self.roi_layers = nn.ModuleList(
                [layer_cls(spatial_scale=1 / s, **cfg) for s in featmap_strides])
            self.out_channels = out_channels
            self.featmap_strides = featmap_strides
            self.finest_scale = finest_scale

        def pool(self, feats, rois, target):
            out = None
            for i in range(len(feats)):
                inds = (target == i).nonzero(as_tuple=False).squeeze(1)
                pooled = self.roi_layers[i](feats[i], rois[inds])
                if out is None:
                    out = feats[0].new_zeros((len(rois), *pooled.shape[1:]))
                out[inds] = pooled
            return out

    class SingleRoIExtractor(BaseRoIExtractor):
        def forward(self, feats, rois, roi_scale_factor=None):
            rois = rois.type_as(feats[0])
            if len(feats) == 1:
                return self.roi_layers[0](feats[0], rois)
            scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
            target = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
            target = target.clamp(min=0, max=len(feats) - 1).long()
            if roi_scale_factor is not None:
                cx, cy = (rois[:, 1] + rois[:, 3]) * 0.5, (rois[:, 2] + rois[:, 4]) * 0.5
                w = (rois[:, 3] - rois[:, 1]) * roi_scale_factor
                h = (rois[:, 4] - rois[:, 2]) * roi_scale_factor
                rois = torch.stack((rois[:, 0], cx - w * 0.5, cy - h * 0.5, cx + w * 0.5,
                                    cy + h * 0.5), dim=-1)
            return self.pool(feats, rois, target)
"""
# mmrotate's RotatedSingleRoIExtractor (mmrotate/models/roi_heads/roi_extractors/, on
# mmdet's base): levels by w * h, boxes scaled about their own centres
MMROTATE_EXTRACTORS = """
    import torch
    from mmdet.models.roi_heads.roi_extractors import BaseRoIExtractor

    class RotatedSingleRoIExtractor(BaseRoIExtractor):
        def forward(self, feats, rois, roi_scale_factor=None):
            if len(feats) == 1:
                return self.roi_layers[0](feats[0], rois)
            target = torch.floor(torch.log2(torch.sqrt(rois[:, 3] * rois[:, 4])
                                            / self.finest_scale + 1e-6))
            target = target.clamp(min=0, max=len(feats) - 1).long()
            if roi_scale_factor is not None:
                rois = rois.clone()
                rois[:, 3] = roi_scale_factor * rois[:, 3]
                rois[:, 4] = roi_scale_factor * rois[:, 4]
            return self.pool(feats, rois, target)
"""


def extract_patched_and_by_its_loop(monkeypatch, name, roi_layer, feats, rois, g):
    """``(patched output, the extractor's own loop's output over the patched layers, the
    layer types roiops.mmdet.pool_mmdet was called for)`` of the stand-in extractor class
    ``name`` (mmdet's or mmrotate's) built with ``roi_layer``."""
    stand_in(monkeypatch, "mmcv")
    stand_in(monkeypatch, "mmcv.ops", MMCV_OPS)
    for package in ("mmdet", "mmdet.models", "mmdet.models.roi_heads"):
        stand_in(monkeypatch, package)
    mmdet = stand_in(monkeypatch, "mmdet.models.roi_heads.roi_extractors", MMDET_EXTRACTORS)
    for package in ("mmrotate", "mmrotate.models", "mmrotate.models.roi_heads"):
        stand_in(monkeypatch, package)
    mmrotate = stand_in(
        monkeypatch, "mmrotate.models.roi_heads.roi_extractors", MMROTATE_EXTRACTORS
    )
    extractor_class = getattr(mmdet, name, None) or getattr(mmrotate, name)
    extractor = extractor_class(roi_layer, feats[0].shape[1], [4, 8, 16, 32])
    for p in extractor.parameters():
        torch.nn.init.normal_(p, std=0.05, generator=g)
    loop = extractor_class.forward
    calls = []
    one_call = roiops.mmdet.pool_mmdet
    monkeypatch.setattr(roiops.mmdet, "pool_mmdet", lambda *a: calls.append(a[3]) or one_call(*a))
    roiops.patch()
    try:
        out = extractor(feats, rois, 1.2)
        expected = loop(extractor, feats, rois, 1.2)
    finally:
        roiops.unpatch()
    assert extractor_class.forward is loop
    return out, expected, calls


@pytest.mark.parametrize(
    "roi_layer",
    [
        dict(type="RoIAlign", output_size=7, sampling_ratio=0),
        dict(type="RoIPool", output_size=(7, 5)),
        dict(type="DeformRoIPoolPack", output_size=3, output_channels=4),
        dict(type="RoIAlign", output_size=2, sampling_ratio=2, pool_mode="max"),
    ],
    ids=["RoIAlign", "RoIPool", "DeformRoIPoolPack", "max"],
)
def test_patch_pools_mmdet_s_extractor_in_one_call_with_its_numbers(monkeypatch, roi_layer):
    g = torch.Generator().manual_seed(7)
    feats = [torch.randn(2, 4, 128 // 2**i, 128 // 2**i, generator=g) for i in range(4)]
    scale = torch.exp(torch.rand(40, generator=g) * 4.6 + 2.1)  # (8 to 800 px: every level)
    corner = torch.rand(40, 2, generator=g) * 400
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), corner,
                      corner + torch.stack([scale, scale * 0.7], 1)], 1)  # fmt: skip
    out, expected, calls = extract_patched_and_by_its_loop(
        monkeypatch, "SingleRoIExtractor", roi_layer, feats, rois, g
    )
    assert torch.equal(out, expected)
    assert calls == ([] if roi_layer.get("pool_mode") == "max" else [roi_layer["type"]])


@pytest.mark.parametrize(
    "roi_layer",
    [
        dict(type="RoIAlignRotated", output_size=7, sampling_ratio=2, clockwise=True),
        dict(type="RiRoIAlignRotated", out_size=3, num_samples=2, num_orientations=4),
        dict(type="RoIAlign", output_size=2, sampling_ratio=2),
    ],
    ids=["RoIAlignRotated", "RiRoIAlignRotated", "axis-aligned"],
)
def test_patch_pools_mmrotate_s_extractor_in_one_call_with_its_numbers(monkeypatch, roi_layer):
    g = torch.Generator().manual_seed(8)
    feats = [torch.randn(2, 8, 128 // 2**i, 128 // 2**i, generator=g) for i in range(4)]
    side = torch.exp(torch.rand(30, 2, generator=g) * 4.6 + 2.1)
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=g).float(),
                      torch.rand(30, 2, generator=g) * 400, side,
                      torch.rand(30, 1, generator=g) * 6 - 3], 1)  # fmt: skip
    if roi_layer["type"] == "RoIAlign":  # (axis-aligned boxes: mmrotate's loop)
        rois = torch.cat([rois[:, :3], rois[:, 1:3] + rois[:, 3:5]], 1)
    out, expected, calls = extract_patched_and_by_its_loop(
        monkeypatch, "RotatedSingleRoIExtractor", roi_layer, feats, rois, g
    )
    assert calls == ([] if roi_layer["type"] == "RoIAlign" else [roi_layer["type"]])
    if roi_layer["type"] == "RiRoIAlignRotated":  # (roiops turns the pyramid's output once)
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(out, expected)


def test_patch_leaves_alone_a_library_whose_import_fails(monkeypatch):
    # mmdet and mmrotate assert their mmcv's version when imported (an AssertionError,
    # not an ImportError): such a library is not in use, and torchvision is still patched
    import importlib

    real = importlib.import_module

    def refuse(name, *args):
        if name.split(".")[0] in ("mmcv", "mmdet", "mmrotate", "detectron2"):
            raise AssertionError(f"{name}: an incompatible mmcv version is installed")
        return real(name, *args)

    monkeypatch.setattr(roiops._patch.importlib, "import_module", refuse)
    roiops.patch()
    try:
        assert torchvision.ops.roi_align is roiops._patch.roi_align
    finally:
        roiops.unpatch()


@pytest.mark.parametrize("library", ["mmdet", "detectron2"])
def test_patched_extractors_export_to_standard_onnx(monkeypatch, library):
    # mmcv's layers export as mmcv's custom ops (mmdeploy's plugins run them) and
    # detectron2's pooler loops with nonzero; patched, both export as standard RoiAlign
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    import io
    import warnings

    g = torch.Generator().manual_seed(9)
    feats = [torch.randn(1, 4, 64 // 2**i, 64 // 2**i, generator=g) for i in range(4)]
    scale = torch.exp(torch.rand(30, generator=g) * 4.6 + 2.1)
    corner = torch.rand(30, 2, generator=g) * 200
    boxes = torch.cat([corner, corner + torch.stack([scale, scale * 0.7], 1)], 1)
    if library == "mmdet":
        stand_in(monkeypatch, "mmcv")
        stand_in(monkeypatch, "mmcv.ops", MMCV_OPS)
        for package in ("mmdet", "mmdet.models", "mmdet.models.roi_heads"):
            stand_in(monkeypatch, package)
        extractors = stand_in(
            monkeypatch, "mmdet.models.roi_heads.roi_extractors", MMDET_EXTRACTORS
        )
        layer = dict(type="RoIAlign", output_size=7, sampling_ratio=0)
        module = extractors.SingleRoIExtractor(layer, 4, [4, 8, 16, 32])
        second = torch.cat([torch.zeros(30, 1), boxes], 1)
    else:
        stand_in(monkeypatch, "detectron2")
        stand_in(monkeypatch, "detectron2.layers", DETECTRON2_LAYERS)
        stand_in(monkeypatch, "detectron2.modeling")
        poolers = stand_in(monkeypatch, "detectron2.modeling.poolers", DETECTRON2_POOLERS)
        module = poolers.ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 0, "ROIAlignV2")
        second = boxes

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = module

        def forward(self, f0, f1, f2, f3, b):
            return self.pool([f0, f1, f2, f3], b if library == "mmdet" else [b])

    head = Head().eval()
    buffer = io.BytesIO()
    roiops.patch()
    try:
        expected = head(*feats, second)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(head, (*feats, second), buffer, dynamo=False, opset_version=16)
    finally:
        roiops.unpatch()
    kinds = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert "RoiAlign" in kinds and "NonZero" not in kinds
    session = onnxruntime.InferenceSession(buffer.getvalue())
    names = [i.name for i in session.get_inputs()]
    inputs = [t.numpy() for t in (*feats, second)]
    out = session.run(None, dict(zip(names, inputs, strict=True)))[0]
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def patched_extractors_step(monkeypatch, detectron2, device):
    """A forward and backward of detectron2's pooler (half precision: the boxes cast after
    their levels are mapped) and mmdet's extractor (stand-ins), to run patched."""
    _, poolers = detectron2
    stand_in(monkeypatch, "mmcv")
    stand_in(monkeypatch, "mmcv.ops", MMCV_OPS)
    for package in ("mmdet", "mmdet.models", "mmdet.models.roi_heads"):
        stand_in(monkeypatch, package)
    extractors = stand_in(monkeypatch, "mmdet.models.roi_heads.roi_extractors", MMDET_EXTRACTORS)
    features, boxes = detectron2_inputs()
    features = [f.to(device).requires_grad_() for f in features]
    half = [f.detach().half().requires_grad_() for f in features]
    boxes = [b.to(device) for b in boxes]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i), device=device), b], 1)
                      for i, b in enumerate(boxes)])  # fmt: skip
    pooler = poolers.ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], 2, "ROIAlignV2")
    extractor = extractors.SingleRoIExtractor(
        dict(type="RoIAlign", output_size=7, sampling_ratio=0), 4, [4, 8, 16, 32]
    )

    def step():
        out = pooler(half, boxes).float().sum() + extractor(features, rois).sum()
        out.backward()
        return [f.grad for f in features + half]

    return step


def test_patched_extractors_step_runs(monkeypatch, detectron2):
    step = patched_extractors_step(monkeypatch, detectron2, "cpu")
    roiops.patch()
    try:
        grads = step()
    finally:
        roiops.unpatch()
    assert all(g is not None for g in grads)  # (every level's: zeros where no box maps)
    assert grads[0].abs().sum() > 0 and grads[4].abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_patched_extractors_do_not_synchronise_on_cuda(monkeypatch, detectron2):
    # detectron2's and mmdet's loops take a nonzero per level (a host synchronisation);
    # patched, their forward and backward take none
    step = patched_extractors_step(monkeypatch, detectron2, "cuda")
    roiops.patch()
    try:
        step()  # (compiles)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        roiops.unpatch()
