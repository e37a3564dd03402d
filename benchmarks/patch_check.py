"""``roiops.patch()`` on mmcv's and mmdet's real Python classes (not a benchmark: a check
the unit tests make on stand-ins only, as neither installs in CI).

mmcv's compiled ops do not build against current torch and ``mmcv-lite`` has none: its
``mmcv.ops`` imports once ``mmcv._ext`` is a module that has every name (here, one whose
functions raise). Then:

* every RoI layer of ``mmcv.ops``, built with mmcv's own constructor and given
  ``roiops.mmcv``'s parameters (mmcv's names: its checkpoints load), patched, equals
  ``roiops.mmcv``'s layer bit for bit; its functions are ``roiops.mmcv``'s wherever held;
* mmcv's PointRend ops, pure torch, run as they are: ``SimpleRoIAlign`` and
  ``point_sample`` of ``rel_roi_point_to_rel_img_point`` against roiops and the
  formulations written out in ``roiops.bench`` (the unit tests' anchors);
* with mmdet installed, its ``SingleRoIExtractor``, patched, pools in one call and equals
  its own loop over the patched layers, forward bit for bit and gradients to 1e-6; and
  ``roiops.SingleRoIExtractor`` / ``roiops.GenericRoIExtractor`` (sum, concat, mmcv's
  ``ConvModule`` as pre and post module), loaded with mmdet's parameters, equal mmdet's
  own extractors run over the patched layers; with onnx and onnxruntime, the patched
  extractor exports to standard ONNX operators (both exporters), onnxruntime's output
  equal to the model's (mmcv's own layers export as custom ops that need mmdeploy);
* with mmrotate installed (1.0.0rc1, with mmcv 2.0 and mmdet 3.0), its
  ``RotatedSingleRoIExtractor``, patched, against its own loop, and
  ``roiops.SingleRoIExtractor`` of the same config against it.

Run in an environment of its own (mmdet 3.3 needs mmcv < 2.2)::

    pip install "mmcv-lite==2.1.0" "mmdet==3.3.0"
    PYTHONPATH=. python benchmarks/patch_check.py

Exits non-zero where a check fails.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import torch

import roiops


class _Extension(types.ModuleType):
    """``mmcv._ext``: every name there, none runnable."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"mmcv._ext.{name} is not built")

        return missing


def _import_mmcv_ops():
    extension = _Extension("mmcv._ext")
    extension.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    sys.modules.setdefault("mmcv._ext", extension)
    import mmcv.ops

    return mmcv.ops


def paired_layers(ops, g: torch.Generator) -> list[tuple]:
    """``(name, mmcv's layer, roiops.mmcv's layer, inputs)`` for each RoI layer of
    ``ops`` (an ``mmcv.ops``; those this mmcv has), both built with the same arguments,
    mmcv's loaded with roiops' parameters (given values of their own: the Packs' last
    layers start zeroed). ``tests/test_drop_in.py`` runs these on a stand-in of mmcv."""
    from roiops import mmcv as ours

    x = torch.randn(2, 4, 16, 20, generator=g)
    rois = torch.tensor([[0, 1.0, 2, 30, 27], [1, 3, 3, 19, 9], [0, 10, 4, 36, 22]])
    rotated = torch.tensor([[0, 12.0, 10, 16, 9, 0.4], [1, 20, 14, 10, 12, -1.1]])
    beziers = torch.cat([torch.tensor([[0.0], [1.0]]), torch.rand(2, 16, generator=g) * 30], 1)
    offset = torch.randn(3, 2, 3, 3, generator=g) * 0.1
    cases = [
        ("RoIAlign", (3, 0.5, 2, "max", False), (x, rois)),
        ("RoIAlign", (3, 0.5, 0, "max", True, True), (x, rois)),  # (torchvision's: average)
        ("RoIPool", ((2, 3), 0.5), (x, rois)),
        ("RoIAlignRotated", (3, 0.5, 2, True, True), (x, rotated)),
        ("RiRoIAlignRotated", (3, 0.5, 2, 4), (x, rotated)),
        ("PrRoIPool", (3, 0.5), (x, rois)),
        ("BezierAlign", ((2, 4), 0.5, 2), (x, beziers)),
        ("SimpleRoIAlign", (3, 0.5), (x, rois)),
        ("DeformRoIPool", (3, 0.5, 2, 0.2), (x, rois, offset)),
        ("DeformRoIPoolPack", (3, 4, 16, 0.5, 2), (x, rois)),
        ("ModulatedDeformRoIPoolPack", (3, 4, 16, 0.5, 2), (x, rois)),
    ]
    pairs = []
    for name, args, inputs in cases:
        if not hasattr(ops, name):
            print(f"mmcv {name:28s} not in this mmcv")
            continue
        theirs, mine = getattr(ops, name)(*args), getattr(ours, name)(*args)
        for p in mine.parameters():
            torch.nn.init.normal_(p, std=0.05, generator=g)
        theirs.load_state_dict(mine.state_dict())  # (mmcv's parameter names)
        pairs.append((name, theirs, mine, inputs))
    return pairs


def check_mmcv(ops, g: torch.Generator) -> bool:
    from roiops import mmcv as ours

    pairs = paired_layers(ops, g)
    x, rois = pairs[0][3]
    ok = True
    # mmcv's RoIAlign(use_torchvision=True) runs as it is (torchvision's roi_align, no
    # extension): roiops.mmcv's equals it, whatever pool_mode says
    for aligned in (True, False):
        for mode in ("avg", "max"):
            args = (3, 0.5, 2, mode, aligned, True)
            equal = torch.equal(ops.RoIAlign(*args)(x, rois.clone()), ours.RoIAlign(*args)(x, rois))
            ok &= equal
            print(f"mmcv RoIAlign(use_torchvision=True, {mode}, aligned={aligned}) unpatched "
                  f"== roiops.mmcv: {equal}")  # fmt: skip
    roiops.patch()
    try:
        for name, theirs, mine, inputs in pairs:
            equal = torch.equal(theirs(*inputs), mine(*inputs))
            ok &= equal
            print(f"mmcv {name:28s} patched == roiops.mmcv: {equal}")
        held = all(
            getattr(ops, n) is getattr(ours, n)
            for n in roiops._patch.MMCV_FUNCTIONS
            if hasattr(ops, n)
        )
        ok &= held
        print(f"mmcv functions are roiops.mmcv's: {held}")
    finally:
        roiops.unpatch()
    return ok


def check_point_ops(ops, g: torch.Generator) -> bool:
    """mmcv's pure-torch PointRend ops, run as they are (no extension needed), against
    roiops and against the formulations written out in ``roiops.bench`` (the unit tests'
    anchors): ``SimpleRoIAlign`` and ``point_sample`` of
    ``rel_roi_point_to_rel_img_point`` (mmdet's PointRend head, image by image)."""
    from mmcv.ops.point_sample import point_sample, rel_roi_point_to_rel_img_point

    from roiops import bench

    ok = True
    for dtype, tolerance in ((torch.float32, 3e-5), (torch.float64, 1e-12)):
        x = torch.randn(2, 5, 40, 52, generator=g).to(dtype)
        corner = torch.rand(30, 2, generator=g) * 180
        image = torch.sort(torch.randint(0, 2, (30, 1), generator=g).float(), 0)[0]
        rois = torch.cat([image, corner, corner + torch.rand(30, 2, generator=g) * 60 + 2], 1)
        rois = rois.to(dtype)
        points = torch.rand(30, 9, 2, generator=g).to(dtype)
        for aligned in (True, False):
            theirs = ops.SimpleRoIAlign((7, 5), 0.25, aligned)(x, rois)
            anchor = bench.mmcv_simple_roi_align(x, rois, (7, 5), 0.25, aligned)
            ours = roiops.simple_roi_align(x, rois, (7, 5), 0.25, aligned)
            feats = []
            for n in range(2):
                pick = rois[:, 0].long() == n
                rel = rel_roi_point_to_rel_img_point(rois[pick], points[pick], x[n : n + 1], 0.25)
                sampled = point_sample(x[n : n + 1], rel.unsqueeze(0), align_corners=not aligned)
                feats.append(sampled.squeeze(0).transpose(0, 1))
            theirs_points = torch.cat(feats)
            anchor_points = bench.mmcv_roi_point_sample(x, rois, points, 0.25, aligned)
            ours_points = roiops.roi_point_sample(x, rois, points, 0.25, aligned)
            gap = (ours - theirs).abs().max().item()
            point_gap = (ours_points - theirs_points).abs().max().item()
            # (mmcv builds SimpleRoIAlign's bins' centres in float32 whatever the dtype:
            # its float64 is float32's grid, 1e-6 off)
            simple_ok = gap < (3e-5 if dtype == torch.float32 else 1e-5)
            points_ok = point_gap < tolerance and torch.equal(anchor_points, theirs_points)
            ok &= simple_ok and points_ok
            print(f"mmcv {str(dtype):13s} aligned={aligned!s:5s} SimpleRoIAlign: roiops "
                  f"{gap:.1e} off, written-out anchor equal: {torch.equal(anchor, theirs)}; "
                  f"point_sample: roiops {point_gap:.1e} off, anchor equal: "
                  f"{torch.equal(anchor_points, theirs_points)}")  # fmt: skip
    return ok


def check_mmdet(g: torch.Generator) -> bool:
    try:
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
    except ImportError:
        print("mmdet: not installed, not checked")
        return True
    loop = SingleRoIExtractor.forward
    feats = [torch.randn(2, 8, 256 // 2**i, 256 // 2**i, generator=g) for i in range(4)]
    scale = torch.exp(torch.rand(60, generator=g) * 4.8 + 2.1)
    corner = torch.rand(60, 2, generator=g) * 700
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=g).float(), corner,
                      corner + torch.stack([scale, scale * 0.7], 1)], 1)  # fmt: skip
    layers = [
        dict(type="RoIAlign", output_size=7, sampling_ratio=0),
        dict(type="RoIAlign", output_size=(7, 5), sampling_ratio=2, aligned=False),
        dict(type="RoIPool", output_size=7),
        dict(type="SimpleRoIAlign", output_size=14),
        dict(type="DeformRoIPoolPack", output_size=7, output_channels=8),
        dict(type="ModulatedDeformRoIPoolPack", output_size=7, output_channels=8),
        dict(type="RoIAlign", output_size=7, sampling_ratio=0, pool_mode="max"),
    ]
    calls = []
    pool = roiops.mmdet.pool_mmdet
    roiops.mmdet.pool_mmdet = lambda *a: calls.append(a[3]) or pool(*a)
    ok = True
    try:
        for cfg in layers:
            extractor = SingleRoIExtractor(cfg, 8, [4, 8, 16, 32])
            for p in extractor.parameters():
                torch.nn.init.normal_(p, std=0.02, generator=g)
            calls.clear()
            roiops.patch()
            try:
                leaves = [f.clone().requires_grad_() for f in feats]
                out = extractor(leaves, rois, 1.1)
                out.sum().backward()
                one_call = list(calls)
                ref_leaves = [f.clone().requires_grad_() for f in feats]
                ref = loop(extractor, ref_leaves, rois, 1.1)
                ref.sum().backward()
            finally:
                roiops.unpatch()
            equal = torch.equal(out, ref)
            grads = all(torch.allclose(a.grad, b.grad, atol=1e-6)
                        for a, b in zip(leaves, ref_leaves, strict=True))  # fmt: skip
            # (max pooling over several levels keeps mmdet's loop: no call)
            multi_level_max = cfg.get("pool_mode") == "max"
            calls_ok = one_call == ([] if multi_level_max else [cfg["type"]])
            ok &= equal and grads and calls_ok
            label = cfg["type"] + (" max (its loop)" if multi_level_max else "")
            print(f"mmdet SingleRoIExtractor {label:30s} calls as expected: {calls_ok}, "
                  f"== its loop: {equal}, gradients: {grads}")  # fmt: skip
    finally:
        roiops.mmdet.pool_mmdet = pool
    return ok


def check_roiops_extractors(g: torch.Generator) -> bool:
    """``roiops.SingleRoIExtractor`` and ``roiops.GenericRoIExtractor`` (built from the
    same configs, loaded with mmdet's parameters) against mmdet's own extractors, whose
    mmcv layers run patched (mmdet's loop and aggregation as they are)."""
    try:
        from mmdet.models.roi_heads import roi_extractors as theirs
    except ImportError:
        return True
    feats = [torch.randn(2, 8, 128 // 2**i, 128 // 2**i, generator=g) for i in range(4)]
    scale = torch.exp(torch.rand(40, generator=g) * 4.6 + 2.1)
    corner = torch.rand(40, 2, generator=g) * 400
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), corner,
                      corner + torch.stack([scale, scale * 0.7], 1)], 1)  # fmt: skip
    align = dict(type="RoIAlign", output_size=7, sampling_ratio=2)
    conv = dict(type="ConvModule", in_channels=8, out_channels=8, kernel_size=3, padding=1,
                inplace=False)  # fmt: skip
    cases = [
        (
            "SingleRoIExtractor",
            dict(roi_layer=align, out_channels=8, featmap_strides=[4, 8, 16, 32]),
        ),  # fmt: skip
        (
            "GenericRoIExtractor",
            dict(
                aggregation="sum", roi_layer=align, out_channels=8, featmap_strides=[4, 8, 16, 32]
            ),
        ),  # fmt: skip
        (
            "GenericRoIExtractor",
            dict(
                aggregation="concat",
                roi_layer=align,
                out_channels=32,
                featmap_strides=[4, 8, 16, 32],
            ),
        ),  # fmt: skip
        (
            "GenericRoIExtractor",
            dict(
                aggregation="sum",
                pre_cfg=conv,
                post_cfg=conv,
                roi_layer=align,
                out_channels=8,
                featmap_strides=[4, 8, 16, 32],
            ),
        ),  # fmt: skip
    ]
    ok = True
    for name, config in cases:
        torch.manual_seed(0)
        mmdet_extractor = getattr(theirs, name)(**config)
        ours = getattr(roiops, name)(**config)
        ours.load_state_dict(mmdet_extractor.state_dict())
        own_forward = type(mmdet_extractor).forward  # (mmdet's, taken before the patch)
        roiops.patch()
        try:
            leaves = [f.clone().requires_grad_() for f in feats]
            out = own_forward(mmdet_extractor, leaves, rois, 1.1)
            out.sum().backward()
        finally:
            roiops.unpatch()
        mine = [f.clone().requires_grad_() for f in feats]
        result = ours(mine, rois, 1.1)
        result.sum().backward()
        equal = torch.equal(result, out)
        grads = all(torch.allclose(a.grad, b.grad, atol=1e-5)
                    for a, b in zip(leaves, mine, strict=True))  # fmt: skip
        ok &= equal and grads
        extra = {k: v["type"] if isinstance(v, dict) else v for k, v in config.items()
                 if k in ("aggregation", "pre_cfg")}  # fmt: skip
        print(f"mmdet {name} {extra}: roiops' == mmdet's: {equal}, gradients: {grads}")
    return ok


def check_mmrotate(g: torch.Generator) -> bool:
    """mmrotate's ``RotatedSingleRoIExtractor``, patched, against its own loop over the
    patched layers, and ``roiops.SingleRoIExtractor`` of the same config against it
    (mmrotate 1.0.0rc1 imports ``Sequence`` from ``collections``, gone since Python 3.10:
    put back for it)."""
    import collections
    import collections.abc

    if not hasattr(collections, "Sequence"):
        collections.Sequence = collections.abc.Sequence
    try:
        from mmrotate.models.roi_heads.roi_extractors import RotatedSingleRoIExtractor
    except ImportError:
        print("mmrotate: not installed, not checked")
        return True
    feats = [torch.randn(2, 8, 128 // 2**i, 128 // 2**i, generator=g) for i in range(4)]
    side = torch.exp(torch.rand(40, 2, generator=g) * 4.6 + 2.1)
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(),
                      torch.rand(40, 2, generator=g) * 400, side,
                      torch.rand(40, 1, generator=g) * 6 - 3], 1)  # fmt: skip
    loop = RotatedSingleRoIExtractor.forward
    calls = []
    pool = roiops.mmdet.pool_mmdet
    roiops.mmdet.pool_mmdet = lambda *a: calls.append(a[3]) or pool(*a)
    ok = True
    for roi_layer in (
        dict(type="RoIAlignRotated", output_size=7, sampling_ratio=2, clockwise=True),
        dict(type="RoIAlignRotated", out_size=7, sample_num=0),
        dict(
            type="RiRoIAlignRotated", out_size=3, num_samples=2, num_orientations=4, clockwise=True
        ),  # fmt: skip
    ):
        extractor = RotatedSingleRoIExtractor(roi_layer, 8, [4, 8, 16, 32])
        ours = roiops.SingleRoIExtractor(roi_layer, 8, [4, 8, 16, 32])
        calls.clear()
        roiops.patch()
        try:
            out = extractor(feats, rois, (1.2, 1.1))
            one_call = calls == [roi_layer["type"]]
            expected = loop(extractor, feats, rois, (1.2, 1.1))
        finally:
            roiops.unpatch()
        mine = ours(feats, rois, (1.2, 1.1))
        gap = (out - expected).abs().max().item()
        class_gap = (mine - expected).abs().max().item()
        # (ReDet's layer: roiops turns every level's pooled features in one pass, mmcv's
        # kernel turns each sample; equal up to float rounding)
        ok &= one_call and gap <= 1e-6 and class_gap <= 1e-6
        print(f"mmrotate RotatedSingleRoIExtractor {roi_layer['type']:18s}: one call: "
              f"{one_call}, patched {gap:.1e} off its loop, roiops.SingleRoIExtractor "
              f"{class_gap:.1e} off")  # fmt: skip
    roiops.mmdet.pool_mmdet = pool
    return ok


def check_onnx_export(g: torch.Generator) -> bool:
    """mmdet's ``SingleRoIExtractor``, patched, exported to ONNX by both of torch's
    exporters: standard operators (``RoiAlign``, ``MaxRoiPool``; mmcv's own layers export
    as mmcv's custom ops, which need mmdeploy's plugins), onnxruntime's output equal to
    the model's."""
    try:
        import io
        import warnings

        import onnx
        import onnxruntime
        from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
    except ImportError:
        print("ONNX export: mmdet, onnx or onnxruntime not installed, not checked")
        return True
    feats = [torch.randn(1, 8, 128 // 2**i, 128 // 2**i, generator=g) for i in range(4)]
    scale = torch.exp(torch.rand(40, generator=g) * 4.6 + 2.1)
    corner = torch.rand(40, 2, generator=g) * 400
    rois = torch.cat([torch.zeros(40, 1), corner,
                      corner + torch.stack([scale, scale * 0.7], 1)], 1)  # fmt: skip

    class Head(torch.nn.Module):
        def __init__(self, roi_layer):
            super().__init__()
            self.extractor = SingleRoIExtractor(roi_layer, 8, [4, 8, 16, 32])

        def forward(self, f0, f1, f2, f3, rois):
            return self.extractor([f0, f1, f2, f3], rois)

    ok = True
    for roi_layer in (
        dict(type="RoIAlign", output_size=7, sampling_ratio=0),
        dict(type="RoIAlign", output_size=7, sampling_ratio=2, aligned=False),
        dict(type="RoIPool", output_size=7),
    ):
        head = Head(roi_layer).eval()
        for dynamo in (False, True):
            roiops.patch()
            try:
                expected = head(*feats, rois)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if dynamo:
                        program = torch.onnx.export(head, (*feats, rois), dynamo=True,
                                                    opset_version=18)  # fmt: skip
                        data = program.model_proto.SerializeToString()
                    else:
                        buffer = io.BytesIO()
                        torch.onnx.export(head, (*feats, rois), buffer, dynamo=False,
                                          opset_version=16)  # fmt: skip
                        data = buffer.getvalue()
            finally:
                roiops.unpatch()
            kinds = {node.op_type for node in onnx.load_from_string(data).graph.node}
            session = onnxruntime.InferenceSession(data)
            inputs = [t.numpy() for t in (*feats, rois)]
            names = [i.name for i in session.get_inputs()]
            out = session.run(None, dict(zip(names, inputs, strict=True)))[0]
            gap = float(abs(out - expected.numpy()).max())
            standard = {"RoiAlign", "MaxRoiPool"} & kinds and not any("MMCV" in k for k in kinds)
            ok &= bool(standard) and gap <= 1e-5
            exporter = "dynamo" if dynamo else "TorchScript"
            print(
                f"ONNX ({exporter:11s}) mmdet SingleRoIExtractor {roi_layer['type']:8s}: "
                f"{sorted({'RoiAlign', 'MaxRoiPool'} & kinds)}, onnxruntime {gap:.1e} off"
            )
    return ok


def main() -> int:
    try:
        ops = _import_mmcv_ops()
    except ImportError:
        print("mmcv: not installed (pip install mmcv-lite), nothing checked")
        return 1
    print("mmcv", sys.modules["mmcv"].__version__)
    g = torch.Generator().manual_seed(0)
    ok = check_mmcv(ops, g)
    ok &= check_point_ops(ops, g)
    ok &= check_mmdet(g)
    ok &= check_roiops_extractors(g)
    ok &= check_mmrotate(g)
    ok &= check_onnx_export(g)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
