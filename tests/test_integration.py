"""roiops inside other machinery: torch.fx, torch.compile, autocast (issue 11).

ONNX export, DDP and the torchvision drop-in have their own files.
"""

import pytest
import torch
import torchvision
from torch import nn

import roiops

SCALES = [0.25, 0.125]


def straight_beziers(rois):
    """Each box's top and bottom edges as straight Bézier curves (``Tensor[K, 17]``, the
    bottom one listed from its end)."""
    t = rois.new_tensor([0.0, 1 / 3, 2 / 3, 1.0])
    x1, y1, x2, y2 = rois[:, 1:2], rois[:, 2:3], rois[:, 3:4], rois[:, 4:5]
    along = x1 + (x2 - x1) * t
    top = torch.stack([along, y1.expand_as(along)], 2).flatten(1)
    bottom = torch.stack([along.flip(1), y2.expand_as(along)], 2).flatten(1)
    return torch.cat([rois[:, :1], top, bottom], 1)


class EveryOp(nn.Module):
    """Every public function and module of roiops, called the ways users call them."""

    def __init__(self):
        super().__init__()
        self.align = roiops.RoIAlign((3, 2), 0.5, 2, True)
        self.pool = roiops.RoIPool(3, 0.5)
        self.ps_align = roiops.PSRoIAlign(2, 0.5, 2)
        self.ps_pool = roiops.PSRoIPool(2, 0.5)
        self.rotated = roiops.RoIAlignRotated(3, 0.5, 2)
        self.prroi = roiops.PrRoIPool2D(2, 2, 0.5)
        self.fpn = roiops.MultiScaleRoIAlign(["p2", "p3"], 3, 2)
        self.pooler = roiops.ROIPooler(3, SCALES, 2, "ROIAlignV2")
        self.pooler_max = roiops.ROIPooler(2, SCALES, 0, "ROIPool")
        self.pooler_rotated = roiops.ROIPooler(2, SCALES, 0, "ROIAlignRotated")
        self.mmdet = roiops.SingleRoIExtractor(dict(type="RoIAlign", output_size=2), 8, [4, 8])
        redet = dict(type="RiRoIAlignRotated", out_size=2, num_samples=2, num_orientations=4,
                     clockwise=True)  # fmt: skip
        self.mmrotate = roiops.SingleRoIExtractor(redet, 8, [4, 8])
        self.simple = roiops.SimpleRoIAlign(2, 0.5)
        self.groie = roiops.GenericRoIExtractor(
            "concat", nn.ReLU(), roi_layer=dict(type="RoIAlign", output_size=2),
            out_channels=16, featmap_strides=[4, 8],
        )  # fmt: skip
        self.invariant = roiops.RiRoIAlignRotated(2, 0.5, 0, 2)
        self.deform = roiops.DeformRoIPoolPack(2, 8, 16, 0.5, 2)
        g = torch.Generator().manual_seed(0)  # (every EveryOp the same; the last layer not 0)
        for p in self.deform.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.1

    def forward(self, x, rois, boxes, rotated, pyramid, image_shapes):
        levels = [pyramid["p2"], pyramid["p3"]]
        outs = [
            roiops.roi_align(x, rois, 3, 0.5, 2, True),
            roiops.roi_align(x, rois, 2, 0.5, 0, False, mode="max"),
            roiops.roi_pool(x, boxes, 2, 0.5),
            roiops.ps_roi_align(x, rois, 2, 0.5, 2),
            roiops.ps_roi_pool(x, rois, 2, 0.5),
            roiops.roi_align_rotated(x, rotated, 2, 0.5, 2, angle_unit="degrees"),
            roiops.prroi_pool(x, rois, 2, 0.5),
            roiops.multi_scale_roi_align(levels, boxes, 2, SCALES, 2),
            roiops.multi_scale_roi_pool(levels, boxes, 2, SCALES),
            roiops.multi_scale_roi_align_rotated(levels, rotated, 2, SCALES, 2),
            roiops.map_levels(boxes, 2, 3)[:, None].to(x.dtype),
            self.align(x, rois),
            self.pool(x, rois),
            self.ps_align(x, rois),
            self.ps_pool(x, rois),
            self.rotated(x, rotated),
            self.prroi(x, rois),
            self.fpn(pyramid, boxes, image_shapes),
            self.pooler(levels, boxes),
            self.pooler_max(levels, boxes),
            self.pooler_rotated(levels, rotated),
            self.mmdet(levels, rois),
            roiops.deform_roi_pool(x, rois, None, 2, 0.5, 2),
            self.deform(x, rois),
            roiops.bezier_align(x, straight_beziers(rois), (2, 3), 0.5, 0),
            roiops.riroi_align_rotated(x, rotated, 2, 0.5, 2, 4, True),
            self.invariant(x, rotated),
            self.mmrotate(levels, rotated),
            self.groie(levels, rois),
            roiops.simple_roi_align(x, boxes, 2, 0.5, False),
            self.simple(x, rois),
            roiops.roi_point_sample(x, rois, rois[:1, 1:].reshape(1, 2, 2) % 1, 0.5).flatten(1),
            roiops.deform_ps_roi_pool(
                x, rois, rois[:, 1:3].reshape(-1, 2, 1, 1) / 50, 2, 0.5, 2, 1, 2, 0.1
            ),
            roiops.crop_and_resize(x, rois[:, 1:] / 20, rois[:, 0].long(), (2, 3)),
        ]
        return torch.cat([o.flatten(1) for o in outs], 1)


PUBLIC_CALLS = {
    "roi_align": 2 + 1,  # two direct calls, one through RoIAlign
    "roi_pool": 1 + 1,
    "ps_roi_align": 1 + 1,
    "ps_roi_pool": 1 + 1,
    "roi_align_rotated": 1 + 1,
    "prroi_pool": 1 + 1,
    "multi_scale_roi_align": 1,
    "multi_scale_roi_pool": 1,
    "multi_scale_roi_align_rotated": 1,
    "map_levels": 1,
    "pool_pyramid": 1,  # MultiScaleRoIAlign
    "pool_detectron2": 3,  # ROIPooler
    "pool_mmdet": 2,  # SingleRoIExtractor (mmdet's, mmrotate's)
    "pool_every_level": 1,  # GenericRoIExtractor
    "deform_roi_pool": 1 + 1,  # one direct call, one through DeformRoIPoolPack
    "pack_features": 1,  # DeformRoIPoolPack
    "bezier_align": 1,
    "riroi_align_rotated": 1 + 1,
    "simple_roi_align": 1 + 1,  # one direct call, one through SimpleRoIAlign
    "roi_point_sample": 1,
    "deform_ps_roi_pool": 1,
    "crop_and_resize": 1,
}


def every_op_inputs(k, seed=0, dtype=torch.float32):
    """Inputs of EveryOp with k RoIs over 2 images (8 channels: 2 x 2 bins x 2 outputs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 12, 14, generator=g, dtype=dtype)
    xy = torch.rand(k, 2, generator=g, dtype=dtype) * 16
    wh = torch.rand(k, 2, generator=g, dtype=dtype) * 10 + 1
    batch = torch.arange(k) % 2
    corners = torch.cat([xy, xy + wh], 1)
    rois = torch.cat([batch[:, None].to(dtype), corners], 1)
    boxes = [corners[batch == 0], corners[batch == 1]]
    angle = torch.rand(k, 1, generator=g, dtype=dtype) * 90
    rotated = torch.cat([batch[:, None].to(dtype), xy + wh / 2, wh, angle], 1)
    pyramid = {
        "p2": torch.randn(2, 8, 24, 28, generator=g, dtype=dtype),
        "p3": torch.randn(2, 8, 12, 14, generator=g, dtype=dtype),
    }
    return x, rois, boxes, rotated, pyramid, [(96, 112), (90, 100)]


def test_fx_symbolic_trace_keeps_every_call_a_leaf():
    model = EveryOp()
    args = every_op_inputs(9)
    traced = torch.fx.symbolic_trace(model)
    called = {}
    for node in traced.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__module__", "").startswith(
            "roiops"
        ):
            called[node.target.__name__] = called.get(node.target.__name__, 0) + 1
    assert called == PUBLIC_CALLS
    assert torch.equal(traced(*args), model(*args))
    # the traced module is ordinary Python: it runs on new inputs, with other RoI counts
    other = every_op_inputs(13, seed=1)
    assert torch.equal(traced(*other), model(*other))


def test_fx_leaf_costs_nothing_on_real_tensors():
    # the leaf wrapper passes real calls straight through (same result object semantics)
    x, rois = every_op_inputs(5)[:2]
    assert roiops.roi_align.__wrapped__ is not roiops.roi_align
    assert torch.equal(
        roiops.roi_align(x, rois, 3, 0.5, 2), roiops.roi_align.__wrapped__(x, rois, 3, 0.5, 2)
    )


def test_torch_compile_fullgraph_matches_eager_forward_and_backward():
    model = EveryOp()
    compiled = torch.compile(model, fullgraph=True)
    x, *rest = every_op_inputs(9)
    x = x.requires_grad_()
    out = compiled(x, *rest)
    expected = model(x, *rest)
    assert torch.equal(out, expected)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (grad_eager,) = torch.autograd.grad(expected.square().sum(), x)
    assert torch.equal(grad, grad_eager)


def test_torch_compile_dynamic_does_not_recompile_for_new_roi_counts():
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(EveryOp(), fullgraph=True, dynamic=True, backend=counter)
    model = EveryOp()
    # RoI counts (and per-image counts) unlike any fixed size of the inputs: dynamo's
    # duck sizing gives equal sizes one symbol, so a count equal to, say, the 4 box
    # columns would be specialised by the shape check of the boxes
    for k in (31, 35, 41):
        args = every_op_inputs(k, seed=k)
        assert torch.equal(compiled(*args), model(*args))
        frames = counter.frame_count
        if k == 31:
            first = frames
    assert frames == first


@pytest.mark.parametrize("backend", ["reference", "numba", "triton"])
def test_every_op_on_maps_without_columns_gives_zeros(backend):
    # every sampling point and cell lies outside a map of no columns: zero outputs and no
    # gradient, no error (torchvision 0.29's CPU roi_align crashes the process on a map
    # of no rows; its kernels are not called here)
    x, rois, boxes, rotated, _, image_shapes = every_op_inputs(5)
    x = torch.randn(2, 8, 12, 0, requires_grad=True)
    pyramid = {"p2": torch.randn(2, 8, 24, 0, requires_grad=True),
               "p3": torch.randn(2, 8, 12, 0, requires_grad=True)}  # fmt: skip
    with roiops.use_backend(backend):
        out = EveryOp()(x, rois, boxes, rotated, pyramid, image_shapes)
        grads = torch.autograd.grad(out.square().sum(), [x, *pyramid.values()])
    # (one column is map_levels', a level index)
    level_nonzero = (roiops.map_levels(boxes, 2, 3) != 0).to(torch.int64)
    assert out.shape[0] == 5 and torch.isfinite(out).all()
    assert torch.equal(out.count_nonzero(1), level_nonzero)
    assert all(g.shape == t.shape for g, t in zip(grads, [x, *pyramid.values()], strict=True))


def test_a_pyramid_map_without_rows_has_no_scale_to_infer():
    _, _, boxes, _, pyramid, image_shapes = every_op_inputs(5)
    pyramid["p3"] = pyramid["p3"][:, :, :0]
    with pytest.raises(ValueError, match="feature map 'p3' of shape .2, 8, 0, 14."):
        EveryOp().fpn(pyramid, boxes, image_shapes)
    with pytest.raises(ValueError, match="image height 0"):
        EveryOp().fpn(every_op_inputs(5)[4], boxes, [(0, 100)])


def test_torch_export_runs_every_op():
    model = EveryOp()
    program = torch.export.export(model, every_op_inputs(31))
    other = every_op_inputs(31, seed=3)  # new values, same shapes
    assert torch.equal(program.module()(*other), model(*other))


OPS_UNDER_AUTOCAST = {
    "roi_align": lambda x, r: roiops.roi_align(x, r, 3, 0.5, 2, True),
    "roi_align max": lambda x, r: roiops.roi_align(x, r, 3, 0.5, 2, True, mode="max"),
    "roi_pool": lambda x, r: roiops.roi_pool(x, r, 3, 0.5),
    "simple_roi_align": lambda x, r: roiops.simple_roi_align(x, r, 3, 0.5),
    "roi_point_sample": lambda x, r: roiops.roi_point_sample(x, r, torch.full((1, 4, 2), 0.3), 0.5),
    "ps_roi_align": lambda x, r: roiops.ps_roi_align(x, r, 2, 0.5, 2),
    "ps_roi_pool": lambda x, r: roiops.ps_roi_pool(x, r, 2, 0.5),
    "prroi_pool": lambda x, r: roiops.prroi_pool(x, r, 2, 0.5),
    "multi_scale_roi_align": lambda x, r: roiops.multi_scale_roi_align(
        [x, x[:, :, ::2, ::2]], r, 2, SCALES, 2
    ),
    "multi_scale_roi_align_rotated": lambda x, r: roiops.multi_scale_roi_align_rotated(
        [x, x[:, :, ::2, ::2]], torch.cat([r, r[:, 1:2]], 1), 2, SCALES, 2
    ),
    "riroi_align_rotated": lambda x, r: roiops.riroi_align_rotated(
        x, torch.cat([r, r[:, 1:2]], 1), 2, 0.5, 2, 4
    ),
    "SingleRoIExtractor": lambda x, r: roiops.SingleRoIExtractor(
        dict(type="RoIAlign", output_size=2), 8, [4, 8]
    )([x, x[:, :, ::2, ::2]], r),
}


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(OPS_UNDER_AUTOCAST))
def test_autocast_cpu_runs_in_float32_and_returns_the_input_dtype(name, autocast_dtype):
    # torchvision's autocast rule: inputs and boxes cast to float32, the op run, the
    # result cast back to the input's dtype. roiops computes half inputs in float32 and
    # takes boxes of any floating dtype, so the ops follow the rule as they are.
    op = OPS_UNDER_AUTOCAST[name]
    x, rois = every_op_inputs(9)[:2]
    with torch.autocast("cpu", dtype=autocast_dtype):
        # float32 features, boxes from a layer that ran in half precision
        out = op(x, rois.to(autocast_dtype))
        assert out.dtype == torch.float32
        assert torch.equal(out, op(x, rois.to(autocast_dtype).float()))
        half = op(x.to(autocast_dtype), rois)
    assert half.dtype == autocast_dtype
    assert torch.equal(half, op(x.to(autocast_dtype).float(), rois).to(autocast_dtype))


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_autocast_cpu_roi_align_dtypes_and_numbers_as_torchvision(autocast_dtype):
    x, rois = every_op_inputs(9)[:2]
    for xin, rin in [(x, rois), (x.to(autocast_dtype), rois), (x, rois.to(autocast_dtype))]:
        with torch.autocast("cpu", dtype=autocast_dtype):
            ours = roiops.roi_align(xin, rin, 3, 0.5, 2, True)
            theirs = torchvision.ops.roi_align(xin, rin, 3, 0.5, 2, True)
        assert ours.dtype == theirs.dtype
        assert torch.equal(ours, theirs)


def test_autocast_backward_and_bad_dtype():
    x, rois = every_op_inputs(9)[:2]
    x = x.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roiops.roi_align(x, rois, 3, 0.5, 2, True)
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError, match="roi_align: input must be float32"):
            roiops.roi_align(x.detach().to(torch.int32), rois, 3)
        with pytest.raises(TypeError, match="boxes must be a floating point"):
            roiops.roi_align(x.detach(), rois.to(torch.int64), 3)
