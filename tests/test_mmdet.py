"""mmdet's (and mmrotate's) RoI extractors, roiops.mmdet: SingleRoIExtractor and
GenericRoIExtractor against mmdet's forwards written out (mmdet and mmcv's ops are not
installable here), with mmcv's layers as roiops' ops."""

import numpy as np
import pytest
import torch
from conftest import as_tensor
from test_multi_scale_roi_align import rotated_rois_over

import roiops

STRIDES = [4, 8, 16, 32]


def mmdet_extract(layer, feats, rois, rotated=False, roi_scale_factor=None, finest_scale=56):
    """mmdet's ``SingleRoIExtractor.forward`` (mmrotate's ``RotatedSingleRoIExtractor``
    with ``rotated``) written out, as mmdet 3 and mmrotate ship it: its level mapping,
    rescaling and loop over the levels, with ``layer(feat, rois, spatial_scale)`` for
    mmcv's layer (mmdet and mmcv are not installable here)."""
    if len(feats) == 1:
        return layer(feats[0], rois, 1 / STRIDES[0])
    if rotated:
        scale = torch.sqrt(rois[:, 3] * rois[:, 4])
    else:
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    target = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    target = target.clamp(min=0, max=len(feats) - 1).long()
    if roi_scale_factor is not None and rotated:
        rois = rois.clone()
        rois[:, 3] = roi_scale_factor * rois[:, 3]
        rois[:, 4] = roi_scale_factor * rois[:, 4]
    elif roi_scale_factor is not None:
        cx = (rois[:, 1] + rois[:, 3]) * 0.5
        cy = (rois[:, 2] + rois[:, 4]) * 0.5
        new_w = (rois[:, 3] - rois[:, 1]) * roi_scale_factor
        new_h = (rois[:, 4] - rois[:, 2]) * roi_scale_factor
        rois = torch.stack(
            (rois[:, 0], cx - new_w * 0.5, cy - new_h * 0.5, cx + new_w * 0.5, cy + new_h * 0.5),
            dim=-1,
        )
    out = None
    for i, feat in enumerate(feats):
        inds = (target == i).nonzero(as_tuple=False).squeeze(1)
        pooled = layer(feat, rois[inds], 1 / STRIDES[i])
        out = feats[0].new_zeros((len(rois), *pooled.shape[1:])) if out is None else out
        out[inds] = pooled
    return out


def mmdet_rois(rng, batch, count, image=1024):
    """``Tensor[K, 5]`` boxes of sqrt(area) 8 to 1000 px, aspect ratios 1/2 to 2, over an
    image (every level of P2-P5 by mmdet's mapping)."""
    scale = np.exp(rng.uniform(np.log(8), np.log(1000), count))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2), count))
    w, h = scale * np.sqrt(aspect), scale / np.sqrt(aspect)
    x1 = rng.uniform(-w / 4, image - w * 3 / 4)
    y1 = rng.uniform(-h / 4, image - h * 3 / 4)
    batch_index = rng.integers(0, batch, count)
    return np.stack([batch_index, x1, y1, x1 + w, y1 + h], axis=1)


MMDET_LAYERS = {
    "RoIAlign": (
        dict(type="RoIAlign", output_size=7, sampling_ratio=0),
        lambda f, r, s: roiops.roi_align(f, r, 7, s, 0, True),
    ),
    "RoIAlign v1": (
        dict(type="RoIAlign", output_size=(7, 5), sampling_ratio=2, aligned=False),
        lambda f, r, s: roiops.roi_align(f, r, (7, 5), s, 2, False),
    ),
    "RoIPool": (
        dict(type="RoIPool", output_size=7),
        lambda f, r, s: roiops.roi_pool(f, r, 7, s),
    ),
    "RoIAlignRotated": (  # (mmrotate's configs: the old argument names, radians)
        dict(type="RoIAlignRotated", out_size=7, sample_num=2, clockwise=True),
        lambda f, r, s: roiops.roi_align_rotated(f, r, 7, s, 2, True, "radians", True),
    ),
}


@pytest.mark.parametrize("kind", list(MMDET_LAYERS))
@pytest.mark.parametrize("roi_scale_factor", [None, 1.5])
def test_single_roi_extractor_is_mmdet_s(rng, kind, roi_scale_factor):
    config, layer = MMDET_LAYERS[kind]
    feats = [as_tensor(rng.standard_normal((2, 8, 256 >> i, 256 >> i)), torch.float32)
             for i in range(4)]  # fmt: skip
    rotated = kind == "RoIAlignRotated"
    if rotated:
        rois = as_tensor(rotated_rois_over(rng, 2, 60, 1024), torch.float32)
        rois[:, 5] = torch.deg2rad(rois[:, 5])
    else:
        rois = as_tensor(mmdet_rois(rng, 2, 60), torch.float32)
    extractor = roiops.SingleRoIExtractor(config, 8, STRIDES)
    leaves = [f.clone().requires_grad_() for f in feats]
    out = extractor(leaves, rois, roi_scale_factor)
    expected = mmdet_extract(layer, feats, rois, rotated, roi_scale_factor)
    assert len(extractor.map_roi_levels(rois, 4).unique()) == 4
    assert torch.equal(out, expected)
    out.sum().backward()
    assert all(f.grad is not None for f in leaves)
    # one level: mmdet pools it directly
    assert torch.equal(extractor(feats[:1], rois), layer(feats[0], rois, 1 / 4))


@pytest.mark.parametrize("kind", ["DeformRoIPoolPack", "ModulatedDeformRoIPoolPack"])
def test_single_roi_extractor_with_deformable_layers_is_mmdet_s(rng, kind):
    # mmdet's configs/dcn dpool / mdpool: a deformable layer per level (its own offset
    # head), mmdet's loop over the levels
    torch.manual_seed(0)
    feats = [as_tensor(rng.standard_normal((2, 4, 256 >> i, 256 >> i)), torch.float32)
             for i in range(4)]  # fmt: skip
    rois = as_tensor(mmdet_rois(rng, 2, 40), torch.float32)
    config = dict(type=kind, output_size=3, output_channels=4, deform_fc_channels=16,
                  sampling_ratio=2)  # fmt: skip
    extractor = roiops.SingleRoIExtractor(config, 4, STRIDES)
    for p in extractor.parameters():  # (trained: the last layers are not zero)
        torch.nn.init.normal_(p, std=0.2)
    assert [layer.spatial_scale for layer in extractor.roi_layers] == [1 / s for s in STRIDES]
    names = {n.split(".", 2)[2] for n, _ in extractor.named_parameters()}
    assert "offset_fc.4.weight" in names and all(n.startswith("roi_layers.") for n, _ in
                                                   extractor.named_parameters())  # fmt: skip

    def layer(feat, r, scale):
        return extractor.roi_layers[STRIDES.index(round(1 / scale))](feat, r)

    leaves = [f.clone().requires_grad_() for f in feats]
    out = extractor(leaves, rois, 1.2)
    assert torch.equal(out, mmdet_extract(layer, feats, rois, roi_scale_factor=1.2))
    assert torch.equal(extractor(feats[:1], rois), layer(feats[0], rois, 1 / 4))
    out.square().sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in leaves)
    assert all(p.grad is not None for p in extractor.parameters())
    # a level without RoIs still runs (its parameters get gradients, zeros)
    extractor.zero_grad()
    small = rois[extractor.map_roi_levels(rois, 4) == 0]
    extractor(feats, small).sum().backward()
    assert all(p.grad is not None for p in extractor.roi_layers[3].parameters())


def test_single_roi_extractor_bad_configs(rng):
    feats = [torch.zeros(1, 8, 16 >> i, 16 >> i) for i in range(2)]
    rois = torch.tensor([[0, 1.0, 1, 30, 30]])
    with pytest.raises(ValueError, match="roi_layer type must be one of"):
        roiops.SingleRoIExtractor(dict(type="DeformRoIPool", output_size=7), 8, [4, 8])
    with pytest.raises(TypeError, match="RoIPool takes no argument 'sampling_ratio'"):
        roiops.SingleRoIExtractor(dict(type="RoIPool", output_size=7, sampling_ratio=2), 8, [4])
    with pytest.raises(TypeError, match="needs an output_size"):
        roiops.SingleRoIExtractor(dict(type="RoIAlign"), 8, [4])
    with pytest.raises(TypeError, match="DeformRoIPoolPack needs an output_channels"):
        roiops.SingleRoIExtractor(dict(type="DeformRoIPoolPack", output_size=7), 8, [4])
    extractor = roiops.SingleRoIExtractor(dict(type="RoIAlign", output_size=2), 4, [4, 8])
    with pytest.raises(ValueError, match="out_channels is 4 but the feature maps have 8"):
        extractor(feats, rois)
    extractor = roiops.SingleRoIExtractor(dict(type="RoIAlign", output_size=2), 8, [4])
    with pytest.raises(ValueError, match="1 to 1 feature maps"):
        extractor(feats, rois)
    with pytest.raises(ValueError, match=r"rois must be a Tensor\[K, 5\]"):
        extractor(feats[:1], [rois[:, 1:]])
    extractor = roiops.SingleRoIExtractor(dict(type="RoIAlign", output_size=2), 8, [4, 8])
    with pytest.raises(TypeError, match=r"roi_scale_factor must be a number, got \(1.2, 1.3\)"):
        extractor(feats, rois, (1.2, 1.3))
    config = dict(type="RoIAlign", output_size=2, pool_mode="max")
    extractor = roiops.SingleRoIExtractor(config, 8, [4, 8])
    assert extractor(feats[:1], rois).shape == (1, 8, 2, 2)
    with pytest.raises(NotImplementedError, match="pool_mode='max' over several levels"):
        extractor(feats, rois)


# ------------------------------------------------------------ GenericRoIExtractor (GRoIE)
def mmdet_generic(layer, feats, rois, aggregation, out_channels, pre=None, post=None,
                  roi_scale_factor=None, out_size=(7, 7)):  # fmt: skip
    """mmdet's ``GenericRoIExtractor.forward`` written out (mmdet 3's; ``layer(feat, rois,
    spatial_scale)`` for mmcv's layer of ``out_size``)."""
    if len(feats) == 1:
        return layer(feats[0], rois, 1 / STRIDES[0])
    roi_feats = feats[0].new_zeros(rois.size(0), out_channels, *out_size)
    if roi_feats.shape[0] == 0:
        return roi_feats
    if roi_scale_factor is not None:
        cx = (rois[:, 1] + rois[:, 3]) * 0.5
        cy = (rois[:, 2] + rois[:, 4]) * 0.5
        w = (rois[:, 3] - rois[:, 1]) * roi_scale_factor
        h = (rois[:, 4] - rois[:, 2]) * roi_scale_factor
        rois = torch.stack((rois[:, 0], cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5), -1)
    start_channels = 0
    for i in range(len(feats)):
        roi_feats_t = layer(feats[i], rois, 1 / STRIDES[i])
        end_channels = start_channels + roi_feats_t.size(1)
        if pre is not None:
            roi_feats_t = pre(roi_feats_t)
        if aggregation == "sum":
            roi_feats = roi_feats + roi_feats_t
        else:
            roi_feats[:, start_channels:end_channels] = roi_feats_t
        start_channels = end_channels
    if aggregation == "concat":
        assert start_channels == out_channels
    return post(roi_feats) if post is not None else roi_feats


def levels_of(rng, channels, batch=2):
    return [as_tensor(rng.standard_normal((batch, channels, 128 >> i, 128 >> i)), torch.float32)
            for i in range(4)]  # fmt: skip


@pytest.mark.parametrize("kind", ["RoIAlign", "RoIAlign max", "RoIPool"])
@pytest.mark.parametrize("aggregation", ["sum", "concat"])
def test_generic_roi_extractor_is_mmdet_s(rng, kind, aggregation):
    config, layer = {
        "RoIAlign": MMDET_LAYERS["RoIAlign"],
        "RoIAlign max": (  # (max over levels: each level is its own call)
            dict(type="RoIAlign", output_size=7, sampling_ratio=2, pool_mode="max"),
            lambda f, r, s: roiops.roi_align(f, r, 7, s, 2, True, "max"),
        ),
        "RoIPool": MMDET_LAYERS["RoIPool"],
    }[kind]
    feats = levels_of(rng, 4)
    rois = as_tensor(mmdet_rois(rng, 2, 30, 512), torch.float32)
    out_channels = 4 if aggregation == "sum" else 16
    extractor = roiops.GenericRoIExtractor(
        aggregation, roi_layer=config, out_channels=out_channels, featmap_strides=STRIDES
    )
    for factor in (None, 1.5):
        out = extractor(feats, rois, factor)
        expected = mmdet_generic(layer, feats, rois, aggregation, out_channels,
                                 roi_scale_factor=factor)  # fmt: skip
        assert out.shape == (30, out_channels, 7, 7)
        assert torch.equal(out, expected)
    # every level gets every RoI's gradient
    leaves = [f.clone().requires_grad_() for f in feats]
    extractor(leaves, rois).square().sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in leaves)
    # one level: the layer's output as it is (the factor unused); no RoIs: zeros
    assert torch.equal(extractor(feats[:1], rois, 1.5), layer(feats[0], rois, 1 / 4))
    empty = extractor(feats, rois[:0])
    assert empty.shape == (0, out_channels, 7, 7)


@pytest.mark.parametrize("aggregation", ["sum", "concat"])
def test_generic_roi_extractor_with_pre_and_post_modules_is_mmdet_s(rng, aggregation):
    # GRoIE's configs: a 5x5 convolution on each level's features (one module for every
    # level), another module on the aggregate; mmdet's parameter names. (mmdet's concat
    # sizes each level's slot by its channels before the pre module: it must keep them)
    torch.manual_seed(0)
    feats = levels_of(rng, 4)
    rois = as_tensor(mmdet_rois(rng, 2, 20, 512), torch.float32)
    out_channels = 6 if aggregation == "sum" else 16
    pre = torch.nn.Conv2d(4, out_channels // 4 if aggregation == "concat" else 6, 5, padding=2)
    post = torch.nn.Conv2d(out_channels, 3, 1)
    extractor = roiops.GenericRoIExtractor(
        aggregation, pre, post, roi_layer=MMDET_LAYERS["RoIAlign"][0],
        out_channels=out_channels, featmap_strides=STRIDES,
    )  # fmt: skip
    assert extractor.with_pre and extractor.with_post
    names = ["post_module.bias", "post_module.weight", "pre_module.bias", "pre_module.weight"]
    assert sorted(extractor.state_dict()) == names
    leaves = [f.clone().requires_grad_() for f in feats]
    out = extractor(leaves, rois, 1.2)
    expected = mmdet_generic(MMDET_LAYERS["RoIAlign"][1], feats, rois, aggregation,
                             out_channels, pre, post, 1.2)  # fmt: skip
    assert out.shape == (20, 3, 7, 7)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.square().sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in leaves)
    assert all(p.grad.abs().sum() > 0 for p in extractor.parameters())
    # one level: the layer's output, no module (mmdet)
    assert extractor(feats[:1], rois).shape == (20, 4, 7, 7)


def test_generic_roi_extractor_with_deformable_and_rotated_layers(rng):
    torch.manual_seed(0)
    feats = levels_of(rng, 4)
    rois = as_tensor(mmdet_rois(rng, 2, 20, 512), torch.float32)
    config = dict(type="DeformRoIPoolPack", output_size=7, output_channels=4,
                  deform_fc_channels=16, sampling_ratio=2)  # fmt: skip
    extractor = roiops.GenericRoIExtractor(roi_layer=config, out_channels=4,
                                           featmap_strides=STRIDES)  # fmt: skip
    for p in extractor.parameters():  # (trained: the last layers are not zero)
        torch.nn.init.normal_(p, std=0.2)
    assert [layer.spatial_scale for layer in extractor.roi_layers] == [1 / s for s in STRIDES]

    def layer(feat, r, scale):
        return extractor.roi_layers[STRIDES.index(round(1 / scale))](feat, r)

    out = extractor(feats, rois)
    assert torch.equal(out, mmdet_generic(layer, feats, rois, "sum", 4))
    out.square().sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in extractor.parameters())
    # rotated boxes (mmrotate's rescaling about the centre), every level summed
    config, rotated_layer = MMDET_LAYERS["RoIAlignRotated"]
    boxes = as_tensor(rotated_rois_over(rng, 2, 20, 512), torch.float32)
    boxes[:, 5] = torch.deg2rad(boxes[:, 5])
    extractor = roiops.GenericRoIExtractor(roi_layer=config, out_channels=4,
                                           featmap_strides=STRIDES)  # fmt: skip
    scaled = extractor.roi_rescale(boxes, 1.5)
    expected = sum(rotated_layer(f, scaled, 1 / s) for f, s in zip(feats, STRIDES, strict=True))
    torch.testing.assert_close(extractor(feats, boxes, 1.5), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(scaled[:, 3], boxes[:, 3] * 1.5) and torch.equal(scaled[:, 1], boxes[:, 1])


def test_generic_roi_extractor_builds_mmcv_plugins_through_mmcv(rng, monkeypatch):
    import sys
    import types

    config = dict(type="RoIAlign", output_size=7, sampling_ratio=2)
    pre_cfg = dict(type="ConvModule", in_channels=4, out_channels=4, kernel_size=5, padding=2)
    # without mmcv: a clear error that says what to pass instead
    monkeypatch.setitem(sys.modules, "mmcv", None)
    with pytest.raises(ImportError, match="needs mmcv .* or pass the module itself"):
        roiops.GenericRoIExtractor(pre_cfg=pre_cfg, roi_layer=config, out_channels=4,
                                   featmap_strides=STRIDES)  # fmt: skip
    # with it: mmcv's build_plugin_layer(cfg, postfix) builds each module
    built = []

    def build_plugin_layer(cfg, postfix):
        built.append((cfg["type"], postfix))
        return "conv" + postfix, torch.nn.Conv2d(cfg["in_channels"], cfg["out_channels"], 1)

    cnn = types.ModuleType("mmcv.cnn")
    cnn.build_plugin_layer = build_plugin_layer
    mmcv = types.ModuleType("mmcv")
    mmcv.cnn = cnn
    monkeypatch.setitem(sys.modules, "mmcv", mmcv)
    monkeypatch.setitem(sys.modules, "mmcv.cnn", cnn)
    post_cfg = dict(type="GeneralizedAttention", in_channels=4, out_channels=4)
    extractor = roiops.GenericRoIExtractor("sum", pre_cfg, post_cfg, roi_layer=config,
                                           out_channels=4, featmap_strides=STRIDES)  # fmt: skip
    assert built == [("GeneralizedAttention", "_post_module"), ("ConvModule", "_pre_module")]
    assert isinstance(extractor.pre_module, torch.nn.Conv2d)
    feats = levels_of(rng, 4)
    rois = as_tensor(mmdet_rois(rng, 2, 5, 512), torch.float32)
    assert extractor(feats, rois).shape == (5, 4, 7, 7)


def test_generic_roi_extractor_bad_configs(rng):
    feats = levels_of(rng, 4)
    rois = as_tensor(mmdet_rois(rng, 2, 5, 512), torch.float32)
    config = dict(type="RoIAlign", output_size=7)
    kw = dict(roi_layer=config, featmap_strides=STRIDES)
    with pytest.raises(ValueError, match="aggregation must be 'sum' or 'concat', got 'mean'"):
        roiops.GenericRoIExtractor("mean", out_channels=4, **kw)
    with pytest.raises(ValueError, match="GenericRoIExtractor: roi_layer type must be one of"):
        roiops.GenericRoIExtractor(roi_layer=dict(type="RoIAwarePool3d", out_size=14),
                                   out_channels=4, featmap_strides=[4])  # fmt: skip
    with pytest.raises(TypeError, match="pre_cfg must be an nn.Module or an mmcv plugin"):
        roiops.GenericRoIExtractor("sum", "ConvModule", out_channels=4, **kw)
    with pytest.raises(TypeError, match="positional arguments"):  # (mmdet's: keywords)
        roiops.GenericRoIExtractor("sum", None, None, config, 4, STRIDES)
    with pytest.raises(ValueError, match=r"'sum' adds levels of out_channels=8 channels, got "
                                         r"levels of \[4, 4, 4, 4\]"):  # fmt: skip
        roiops.GenericRoIExtractor(out_channels=8, **kw)(feats, rois)
    with pytest.raises(ValueError, match=r"\(\[4, 4, 4, 4\]\) into out_channels=12, but they "
                                         r"add up to 16"):  # fmt: skip
        roiops.GenericRoIExtractor("concat", out_channels=12, **kw)(feats, rois)
    with pytest.raises(ValueError, match="GenericRoIExtractor: 1 to 4 feature maps"):
        roiops.GenericRoIExtractor(out_channels=4, **kw)(feats + feats[:1], rois)
    with pytest.raises(ValueError, match=r"GenericRoIExtractor: rois must be a Tensor\[K, 5\]"):
        roiops.GenericRoIExtractor(out_channels=4, **kw)(feats, rois[:, 1:])
    with pytest.raises(TypeError, match="GenericRoIExtractor: roi_scale_factor must be"):
        roiops.GenericRoIExtractor(out_channels=4, **kw)(feats, rois, (1.2, 1.3))


def test_generic_roi_extractor_is_one_leaf_under_fx(rng):
    # the pooling is one node; the pre/post modules are traced as modules
    pre, post = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()
    extractor = roiops.GenericRoIExtractor("concat", pre, post, roi_layer=MMDET_LAYERS[
        "RoIAlign"][0], out_channels=16, featmap_strides=STRIDES)  # fmt: skip

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.extractor = extractor

        def forward(self, p2, p3, p4, p5, rois):
            return self.extractor([p2, p3, p4, p5], rois)

    traced = torch.fx.symbolic_trace(Head())
    targets = [n.target for n in traced.graph.nodes if n.op in ("call_function", "call_module")]
    assert sum(getattr(t, "__name__", "") == "pool_every_level" for t in targets) == 1
    assert targets.count("extractor.pre_module") == 4 and "extractor.post_module" in targets
    feats = levels_of(rng, 4)
    rois = as_tensor(mmdet_rois(rng, 2, 7, 512), torch.float32)
    assert torch.equal(traced(*feats, rois), extractor(feats, rois))


def test_pointrend_extractors_with_simple_roi_align(rng):
    # mmdet's PointRend configs: mask_roi_extractor=dict(type="GenericRoIExtractor",
    # roi_layer=dict(type="SimpleRoIAlign", output_size=14), out_channels=256,
    # featmap_strides=[4]): one level, the layer's output
    from roiops.bench import mmcv_simple_roi_align

    feats = levels_of(rng, 4)
    rois = as_tensor(mmdet_rois(rng, 2, 20, 512), torch.float32)
    rois = rois[torch.argsort(rois[:, 0], stable=True)]
    config = dict(type="SimpleRoIAlign", output_size=14)
    extractor = roiops.GenericRoIExtractor(roi_layer=config, out_channels=4, featmap_strides=[4])
    out = extractor(feats[:1], rois)
    assert torch.equal(out, roiops.simple_roi_align(feats[0], rois, 14, 1 / 4))
    # (mmcv's points, ~250 cells out in float32, are a few 1e-5 cells off: rounding)
    theirs = mmcv_simple_roi_align(feats[0], rois, (14, 14), 1 / 4, True)
    torch.testing.assert_close(out, theirs, rtol=1e-4, atol=1e-4)

    def layer(f, r, scale):
        return roiops.simple_roi_align(f, r, 14, scale)

    # every level (GRoIE's sum), and SingleRoIExtractor's loop over the levels
    generic = roiops.GenericRoIExtractor(roi_layer=config, out_channels=4,
                                         featmap_strides=STRIDES)  # fmt: skip
    expected = mmdet_generic(layer, feats, rois, "sum", 4, roi_scale_factor=1.5,
                             out_size=(14, 14))  # fmt: skip
    assert torch.equal(generic(feats, rois, 1.5), expected)
    single = roiops.SingleRoIExtractor(config, 4, STRIDES)
    leaves = [f.clone().requires_grad_() for f in feats]
    out = single(leaves, rois, 1.5)
    assert torch.equal(out, mmdet_extract(layer, feats, rois, roi_scale_factor=1.5))
    out.sum().backward()
    assert all(f.grad is not None for f in leaves)
