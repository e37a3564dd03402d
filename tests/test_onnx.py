"""ONNX: export of roi_align / roi_pool (both exporters, opsets 16 and 22) run in
onnxruntime against eager roiops, ONNX's own RoiAlign conformance cases, and the
``onnx_max`` mode that gives ONNX's max in eager (issue 11)."""

import importlib.util
import io
import warnings

import numpy as np
import pytest
import torch
from conftest import as_tensor, random_rois

import roiops
from roiops.reference import roi_align as reference

pytest.importorskip("onnx")  # test extras: absent on a bare GPU machine
onnxruntime = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnx.version_converter  # noqa: E402
from onnx import helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

# the dynamo=True exporter needs onnxscript
NO_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is None


class Pool(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, rois):
        return self.fn(x, rois)


def export(fn, x, rois, opset, dynamo):
    """The ONNX model of ``fn(x, rois)``, the number of RoIs left dynamic."""
    model = Pool(fn).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                model, (x, rois), dynamo=True, opset_version=opset, input_names=["x", "rois"],
                dynamic_shapes={"x": None, "rois": {0: torch.export.Dim("k")}}, verbose=False,
            )  # fmt: skip
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(
            model, (x, rois), buffer, dynamo=False, opset_version=opset,
            input_names=["x", "rois"], dynamic_axes={"rois": {0: "k"}},
        )  # fmt: skip
        return onnx.load_from_string(buffer.getvalue())


def run_onnxruntime(model, x, rois):
    # onnxruntime 1.32 has no kernels for RoiAlign-22 and MaxRoiPool-22 (opset 22 only
    # widened their types to bfloat16): run an opset-22 model converted to opset 21,
    # which renumbers those nodes and changes nothing else
    if model.opset_import[0].version >= 22:
        model = onnx.version_converter.convert_version(model, 21)
    session = onnxruntime.InferenceSession(model.SerializeToString())
    return session.run(None, {"x": x.numpy(), "rois": rois.numpy()})[0]


def nodes(model):
    return [n.op_type for n in model.graph.node]


def attributes(model, op_type):
    (node,) = [n for n in model.graph.node if n.op_type == op_type]
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = as_tensor(rng.standard_normal((2, 3, 20, 24)), torch.float32)
    rois = [as_tensor(random_rois(rng, 2, k, 80, 96), torch.float32) for k in (9, 4)]
    return x, rois


EXPORTERS = [
    pytest.param(False, id="torchscript"),
    pytest.param(
        True, id="dynamo", marks=pytest.mark.skipif(NO_ONNXSCRIPT, reason="needs onnxscript")
    ),
]
OPSETS = [16, 22]
ROI_ALIGN_CASES = [  # output_size, spatial_scale, sampling_ratio, aligned
    ((3, 4), 0.25, 2, True),
    (7, 0.25, 0, False),  # adaptive, written as ONNX's 0
    ((2, 5), 0.125, -1, True),  # adaptive, torchvision's spelling
    (3, 1.0, 1, False),
]


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", ROI_ALIGN_CASES, ids=str)
@pytest.mark.parametrize("mode", ["avg", "onnx_max"])
def test_roi_align_exports_and_runs_in_onnxruntime(data, dynamo, opset, case, mode):
    x, rois = data
    output_size, scale, ratio, aligned = case

    def fn(a, b):
        return roiops.roi_align(a, b, output_size, scale, ratio, aligned, mode=mode)

    model = export(fn, x, rois[0], opset, dynamo)
    assert model.opset_import[0].version == opset
    attrs = attributes(model, "RoiAlign")
    assert attrs["coordinate_transformation_mode"] == (
        b"half_pixel" if aligned else b"output_half_pixel"
    )
    assert attrs["mode"] == (b"avg" if mode == "avg" else b"max")
    assert attrs["sampling_ratio"] == max(ratio, 0)
    for r in rois:  # the RoI count is dynamic
        out = run_onnxruntime(model, x, r)
        expected = fn(x, r).numpy()
        assert out.shape == expected.shape
        # measured: bit for bit on this machine; float rounding allowed for other builds
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("opset", OPSETS)
def test_opset_22_roi_align_matches_onnx_reference_evaluator(data, dynamo, opset):
    # the ONNX specification's own Python implementation runs RoiAlign at any opset
    x, rois = data

    def fn(a, b):
        return roiops.roi_align(a, b, (3, 4), 0.25, 2, True)

    model = export(fn, x, rois[0], opset, dynamo)
    out = ReferenceEvaluator(model).run(None, {"x": x.numpy(), "rois": rois[1].numpy()})[0]
    np.testing.assert_allclose(out, fn(x, rois[1]).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("output_size,scale", [((3, 4), 0.25), (2, 0.5)])
def test_roi_pool_exports_to_max_roi_pool(data, dynamo, opset, output_size, scale):
    x, rois = data

    def fn(a, b):
        return roiops.roi_pool(a, b, output_size, scale)

    model = export(fn, x, rois[0], opset, dynamo)
    assert "MaxRoiPool" in nodes(model)
    for r in rois:
        out = run_onnxruntime(model, x, r)
        np.testing.assert_array_equal(out, fn(x, r).numpy())  # maxima: exact


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_pyramid_pooler_exports_as_roi_align_per_level(dynamo):
    g = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 4, 32, 40, generator=g), torch.randn(2, 4, 16, 20, generator=g)]
    boxes = torch.tensor([[0, 1.0, 2, 30, 40], [1, 3, 3, 120, 150], [0, 0, 0, 127, 159]])
    pooler = roiops.MultiScaleRoIAlign(["p2", "p3"], 3, 2)
    shapes = [(128, 160), (128, 160)]

    def fn(p2, rois):
        x = {"p2": p2, "p3": features[1]}
        return pooler(x, [rois[rois[:, 0] == i, 1:] for i in range(2)], shapes)

    model = export(fn, features[0], boxes, 16, dynamo)
    assert nodes(model).count("RoiAlign") == 2
    out = run_onnxruntime(model, features[0], boxes)
    np.testing.assert_allclose(out, fn(features[0], boxes).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("kind", ["RoIAlign", "RoIPool"])
def test_mmdet_extractor_exports_per_level(dynamo, kind):
    # mmdet's SingleRoIExtractor: one RoiAlign (MaxRoiPool) per level and the selection
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(2, 4, 32, 40, generator=g), torch.randn(2, 4, 16, 20, generator=g)]
    rois = torch.tensor([[0, 1.0, 2, 30, 40], [1, 3, 3, 120, 150], [0, 0, 0, 127, 159]])
    config = dict(type=kind, output_size=3) | ({"sampling_ratio": 2} if kind == "RoIAlign" else {})
    extractor = roiops.SingleRoIExtractor(config, 4, [4, 8])

    def fn(p2, boxes):
        return extractor([p2, features[1]], boxes)

    model = export(fn, features[0], rois, 16, dynamo)
    assert nodes(model).count("RoiAlign" if kind == "RoIAlign" else "MaxRoiPool") == 2
    out = run_onnxruntime(model, features[0], rois)
    np.testing.assert_allclose(out, fn(features[0], rois).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_mmdet_generic_extractor_exports(dynamo):
    # GRoIE: a RoiAlign per level over every RoI, a convolution on each, the sum
    g = torch.Generator().manual_seed(5)
    features = [torch.randn(2, 4, 32, 40, generator=g), torch.randn(2, 4, 16, 20, generator=g)]
    rois = torch.tensor([[0, 1.0, 2, 30, 40], [1, 3, 3, 120, 150], [0, 0, 0, 127, 159]])
    torch.manual_seed(5)
    extractor = roiops.GenericRoIExtractor(
        "sum",
        torch.nn.Conv2d(4, 4, 3, padding=1),
        roi_layer=dict(type="RoIAlign", output_size=3, sampling_ratio=2),
        out_channels=4,
        featmap_strides=[4, 8],
    ).requires_grad_(False)  # (its weights become constants of fn's model)

    def fn(p2, boxes):
        return extractor([p2, features[1]], boxes)

    model = export(fn, features[0], rois, 16, dynamo)
    assert nodes(model).count("RoiAlign") == 2 and nodes(model).count("Conv") == 2
    out = run_onnxruntime(model, features[0], rois[:2])
    np.testing.assert_allclose(out, fn(features[0], rois[:2]).numpy(), rtol=1e-5,
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("aligned", [True, False])
def test_simple_roi_align_exports_as_pad_and_roi_align(data, dynamo, aligned):
    # PointRend's zero-padded samples: a ring of zeros, then one-point RoIAlign bins
    x, rois = data
    boxes = rois[1].clone()
    boxes[:, 1:] -= 6  # (past the top-left edges too)

    def fn(a, b):
        return roiops.simple_roi_align(a, b, (4, 3), 0.25, aligned)

    model = export(fn, x, rois[0], 16, dynamo)
    assert nodes(model).count("RoiAlign") == 1 and nodes(model).count("Pad") == 1
    out = run_onnxruntime(model, x, boxes)
    expected = fn(x, boxes)
    assert expected.eq(0).any() and expected.ne(0).any()
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_point_sample_exports_as_pad_and_roi_align(data, dynamo, aligned):
    # PointRend's point features: every point a box of no size on a ring of zeros
    x, rois = data
    rng = np.random.default_rng(3)
    boxes = rois[1].clone()
    boxes[:, 1:] -= 6  # (past the top-left edges too)
    example = torch.from_numpy(rng.uniform(-0.3, 1.3, (rois[0].shape[0], 5, 2))).float()
    points = torch.from_numpy(rng.uniform(-0.3, 1.3, (boxes.shape[0], 5, 2))).float()

    def fn(a, b, p):
        return roiops.roi_point_sample(a, b, p, 0.25, aligned)

    model = export_points(fn, x, rois[0], example, dynamo)
    assert nodes(model).count("RoiAlign") == 1 and nodes(model).count("Pad") == 1
    session = onnxruntime.InferenceSession(model.SerializeToString())
    names = [i.name for i in session.get_inputs()]
    out = session.run(None, dict(zip(names, (x.numpy(), boxes.numpy(), points.numpy()),
                                     strict=True)))[0]  # fmt: skip
    expected = fn(x, boxes, points)
    assert expected.eq(0).any() and expected.ne(0).any()
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


class PointsPool(Pool):
    def forward(self, x, rois, points):
        return self.fn(x, rois, points)


def export_points(fn, x, rois, points, dynamo):
    """The ONNX model (opset 16) of ``fn(x, rois, points)``, the RoI count dynamic."""
    model = PointsPool(fn).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            k = torch.export.Dim("k")
            return torch.onnx.export(
                model, (x, rois, points), dynamo=True, opset_version=16,
                input_names=["x", "rois", "points"], verbose=False,
                dynamic_shapes={"x": None, "rois": {0: k}, "points": {0: k}},
            ).model_proto  # fmt: skip
        buffer = io.BytesIO()
        torch.onnx.export(
            model, (x, rois, points), buffer, dynamo=False, opset_version=16,
            input_names=["x", "rois", "points"],
            dynamic_axes={"rois": {0: "k"}, "points": {0: "k"}},
        )  # fmt: skip
        return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_float64_exports_and_runs_in_float64(data, dynamo):
    x, rois = data

    def fn(a, b):
        return roiops.roi_align(a, b, 3, 0.25, 0, True)

    model = export(fn, x.double(), rois[0].double(), 16, dynamo)
    out = run_onnxruntime(model, x.double(), rois[1].double())
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, fn(x.double(), rois[1].double()).numpy(), rtol=1e-12)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_half_precision_exports_as_roiops_computes_it(data, dynamo):
    x, rois = data
    half = x.to(torch.float16)

    def fn(a, b):
        return roiops.roi_align(a, b, 3, 0.25, 2, True)

    model = export(fn, half, rois[0], 16, dynamo)
    assert nodes(model).count("Cast") >= 2  # float32 inside, float16 outside
    session = onnxruntime.InferenceSession(model.SerializeToString())
    out = session.run(None, {"x": half.numpy(), "rois": rois[1].numpy()})[0]
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, fn(half, rois[1]).numpy())


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_exporting_what_onnx_cannot_express_is_a_clear_error(data, dynamo):
    x, rois = data
    with pytest.raises(Exception, match="mode='max'.*has no ONNX operator"):
        export(lambda a, b: roiops.roi_align(a, b, 3, mode="max"), x, rois[0], 16, dynamo)
    with pytest.raises(Exception, match="spatial_scale=0.1 is not a float32 number"):
        export(lambda a, b: roiops.roi_pool(a, b, 3, 0.1), x.double(), rois[0].double(), 16,
               dynamo)  # fmt: skip
    ps = x.repeat(1, 3, 1, 1)[:, :8]
    with pytest.raises(Exception, match="ps_roi_align: no ONNX operator"):
        export(lambda a, b: roiops.ps_roi_align(a, b, 2), ps, rois[0], 16, dynamo)
    pooler = roiops.ROIPooler(2, [0.5], 2, "ROIAlignRotated")  # (rows of 5 as rotated boxes)
    with pytest.raises(Exception, match="multi_scale_roi_align_rotated: no ONNX operator"):
        export(lambda a, b: pooler([a], [b, b]), x, rois[0], 16, dynamo)  # (one per image)
    offset = torch.zeros(rois[0].shape[0], 2, 2, 2)
    with pytest.raises(Exception, match="deform_roi_pool: no ONNX operator"):
        export(lambda a, b: roiops.deform_roi_pool(a, b, offset, 2), x, rois[0], 16, dynamo)
    with pytest.raises(Exception, match="crop_and_resize: no ONNX operator"):
        index = torch.zeros(rois[0].shape[0], dtype=torch.int64)
        export(lambda a, b: roiops.crop_and_resize(a, b[:, 1:] / 16, index, 2), x, rois[0], 16,
               dynamo)  # fmt: skip
    with pytest.raises(Exception, match="deform_ps_roi_pool: no ONNX operator"):
        export(lambda a, b: roiops.deform_ps_roi_pool(a, b, None, 2), x, rois[0], 16, dynamo)
    beziers = torch.cat([rois[0], rois[0][:, 1:].repeat(1, 3)], 1)
    with pytest.raises(Exception, match="bezier_align: no ONNX operator"):
        export(lambda a, b: roiops.bezier_align(a, b, 2), x, beziers, 16, dynamo)
    rotated = torch.cat([rois[0], rois[0][:, 1:2]], 1)
    with pytest.raises(Exception, match="riroi_align_rotated: no ONNX operator"):
        export(lambda a, b: roiops.riroi_align_rotated(a, b, 2, 1.0, 2, 1), x, rotated, 16,
               dynamo)  # fmt: skip


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_deform_roi_pool_without_offsets_exports_as_roi_align(data, dynamo):
    x, rois = data

    def fn(a, b):
        return roiops.deform_roi_pool(a, b, None, 3, 0.5, 2)

    model = export(fn, x, rois[0], 16, dynamo)
    assert attributes(model, "RoiAlign")["coordinate_transformation_mode"] == b"half_pixel"
    np.testing.assert_array_equal(run_onnxruntime(model, x, rois[1]), fn(x, rois[1]).numpy())


def test_aligned_needs_opset_16_with_the_torchscript_exporter(data):
    x, rois = data
    model = export(lambda a, b: roiops.roi_align(a, b, 3, 0.5, 2, False), x, rois[0], 11, False)
    assert "coordinate_transformation_mode" not in attributes(model, "RoiAlign")
    np.testing.assert_allclose(
        run_onnxruntime(model, x, rois[1]),
        roiops.roi_align(x, rois[1], 3, 0.5, 2, False).numpy(),
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(Exception, match="aligned=True needs ONNX opset >= 16"):
        export(lambda a, b: roiops.roi_align(a, b, 3, 0.5, 2, True), x, rois[0], 11, False)


# --------------------------------------------------------------- ONNX conformance data
def conformance_cases():
    from onnx.backend.test.case.node import roialign

    cases = []

    def expect(node, inputs, outputs, name):
        cases.append((name, node, inputs, outputs))

    original = roialign.expect
    roialign.expect = expect
    try:
        for name in dir(roialign.RoiAlign):
            if name.startswith("export"):
                getattr(roialign.RoiAlign, name)()
    finally:
        roialign.expect = original
    return cases


CONFORMANCE = conformance_cases()


@pytest.mark.parametrize("backend", ["reference", "numba", "triton"])
@pytest.mark.parametrize("case", CONFORMANCE, ids=[c[0] for c in CONFORMANCE])
def test_onnx_conformance_cases(case, backend):
    name, node, (X, boxes, batch_indices), (Y,) = case
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = "onnx_max" if attrs.get("mode", b"avg") == b"max" else "avg"
    aligned = attrs.get("coordinate_transformation_mode", b"half_pixel") == b"half_pixel"
    rois = torch.from_numpy(np.concatenate([batch_indices[:, None].astype(X.dtype), boxes], 1))
    with roiops.use_backend(backend):
        out = roiops.roi_align(
            torch.from_numpy(X), rois, (attrs["output_height"], attrs["output_width"]),
            attrs["spatial_scale"], attrs["sampling_ratio"], aligned, mode=mode,
        )  # fmt: skip
    if mode == "onnx_max":
        # the case's expected values are what float32 computes: equal where we can be
        # (the interpreter rounds as the CPU does)
        np.testing.assert_array_equal(out.numpy(), Y)
    else:
        # the avg cases' expected values are printed to 4 decimals in the ONNX source
        np.testing.assert_allclose(out.numpy(), Y, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ onnx_max (eager)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [2, 0])
def test_onnx_max_kernels_equal_reference(rng, dtype, aligned, ratio):
    x = as_tensor(rng.standard_normal((2, 5, 9, 11)), dtype)
    rois = as_tensor(random_rois(rng, 2, 10, 18, 22), dtype)
    grad = as_tensor(rng.standard_normal((10, 5, 3, 2)), dtype)
    results = {}
    for backend in ("reference", "numba", "triton"):
        for layout in (torch.contiguous_format, torch.channels_last):
            xx = x.clone(memory_format=layout).requires_grad_()
            with roiops.use_backend(backend):
                out = roiops.roi_align(xx, rois, (3, 2), 0.5, ratio, aligned, mode="onnx_max")
                out.backward(grad)
            results[backend, layout] = out.detach(), xx.grad
    ref_out, ref_grad = results["reference", torch.contiguous_format]
    for (backend, _), (out, gx) in results.items():
        assert torch.equal(out, ref_out), backend
        if backend == "triton":  # fixed-point sums: exact to ~2^-46 of max |grad|
            torch.testing.assert_close(gx, ref_grad, rtol=0, atol=1e-6)
        else:
            assert torch.equal(gx, ref_grad), backend


def test_onnx_max_is_not_the_articles_max_and_has_a_gradient():
    # a 2x2 map; one bin, one sample at the centre of the cells (weights 1/4 each)
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]], dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.0, 0, 1, 1]], dtype=torch.float64)
    article = roiops.roi_align(x, rois, 1, 1.0, 1, False, mode="max")
    ours = roiops.roi_align(x, rois, 1, 1.0, 1, False, mode="onnx_max")
    assert article.item() == 4.0  # the interpolated value at (0.5, 0.5)
    assert ours.item() == 7.0 / 4  # the largest weighted term, w = 1/4 times 7
    ours.backward()
    expected = torch.zeros_like(x)
    expected[0, 0, 1, 1] = 0.25
    assert torch.equal(x.grad, expected)
    assert torch.autograd.gradcheck(
        lambda a: roiops.roi_align(a, rois, 1, 1.0, 1, False, mode="onnx_max"),
        (x.detach().clone().requires_grad_(),),
    )
    with pytest.raises(ValueError, match="onnx_max' gives no gradient w.r.t. the boxes"):
        roiops.roi_align(x, rois.clone().requires_grad_(), 1, mode="onnx_max")


def test_onnx_max_reference_matches_onnx_reference_implementation(rng):
    # the reference against onnx's own Python RoiAlign (float32) on random boxes
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    rois = random_rois(rng, 2, 12, 18, 22).astype(np.float32)
    for aligned in (True, False):
        out, _ = reference.roi_align_forward(x, rois, 0.5, 3, 2, 2, aligned, "onnx_max")
        node = helper.make_node(
            "RoiAlign", ["x", "r", "b"], ["y"], mode="max", output_height=3, output_width=2,
            sampling_ratio=2, spatial_scale=0.5,
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        )  # fmt: skip
        graph = helper.make_graph(
            [node], "g",
            [helper.make_tensor_value_info(n, t, None) for n, t in
             (("x", onnx.TensorProto.FLOAT), ("r", onnx.TensorProto.FLOAT),
              ("b", onnx.TensorProto.INT64))],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
        feeds = {"x": x, "r": rois[:, 1:].copy(), "b": rois[:, 0].astype(np.int64)}
        theirs = ReferenceEvaluator(model).run(None, feeds)[0]
        np.testing.assert_allclose(out, theirs, rtol=1e-6, atol=1e-6)
