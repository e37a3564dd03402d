"""multi_scale_roi_align / MultiScaleRoIAlign (the FPN pooler) and map_levels: every
backend vs the reference and vs torchvision's MultiScaleRoIAlign and LevelMapper."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from conftest import as_tensor, random_rois, results_across_thread_counts
from torchvision.ops.poolers import LevelMapper

import roiops

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def pyramid(rng, dtype=torch.float32, channels=5, batch=2, size=64):
    return [
        as_tensor(rng.standard_normal((batch, channels, size >> i, size >> i)), dtype)
        for i in range(len(SCALES))
    ]


def boxes_over(rng, count, image=256):
    """Boxes of 4 to 256 px over an image: every level gets some."""
    side = np.exp(rng.uniform(np.log(4), np.log(image), (count, 2)))
    x1 = rng.uniform(0, image - side[:, 0])
    y1 = rng.uniform(0, image - side[:, 1])
    return np.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], axis=1)


def run(backend, features, rois, output_size, ratio, aligned, grad=None):
    features = [f.detach().clone().requires_grad_(grad is not None) for f in features]
    with roiops.use_backend(backend):
        out = roiops.multi_scale_roi_align(features, rois, output_size, SCALES, ratio, aligned)
        if grad is None:
            return out.detach(), None
        out.backward(grad)
    return out.detach(), [f.grad for f in features]


def test_map_levels_by_hand_and_as_torchvision():
    # sqrt(area) 112 -> level 3, 224 -> 4, 448 -> 5, 10 -> clamped to 2, 2000 -> 5
    sides = torch.tensor([112.0, 224, 448, 10, 2000])
    boxes = torch.stack([torch.zeros(5), torch.zeros(5), sides, sides], dim=1)
    assert roiops.map_levels(boxes, 2, 5).tolist() == [1, 2, 3, 0, 3]
    mapper = LevelMapper(2, 5)
    rng = np.random.default_rng(0)
    many = [as_tensor(boxes_over(rng, 500, 1333), torch.float32) for _ in range(2)]
    assert torch.equal(roiops.map_levels(many, 2, 5), mapper(many))


def test_map_levels_of_degenerate_boxes():
    # an inverted box has a negative area: its size counts as 0, the finest level
    # (torchvision's mapper gives it a NaN level, and its pooler an all-zero output)
    boxes = torch.tensor([[10.0, 10, 5, 30], [0, 0, 0, 0], [0, 0, 1e9, 1e9]])
    assert roiops.map_levels(boxes, 2, 5).tolist() == [0, 0, 3]


def test_map_levels_detectron2_convention():
    # detectron2 adds its eps inside the log: a box just under 224 px is level 3 there,
    # where torchvision's eps, added after the log, lifts it to level 4
    side = torch.tensor([224.0 * (1 - 3e-7)])
    box = torch.stack([torch.zeros(1), torch.zeros(1), side, side], dim=1)
    assert roiops.map_levels(box, 2, 5, eps=1e-8, convention="detectron2").item() == 1
    assert roiops.map_levels(box, 2, 5).item() == 2
    with pytest.raises(ValueError, match="convention must be one of"):
        roiops.map_levels(box, 2, 5, convention="mmdet")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_equals_torchvision_s(rng, dtype):
    names = ["p2", "p3", "p4", "p5"]
    x = OrderedDict(zip(names, pyramid(rng, dtype, size=64), strict=True))
    boxes = [as_tensor(boxes_over(rng, n), dtype) for n in (40, 25)]
    shapes = [(256, 256), (250, 240)]
    ours = roiops.MultiScaleRoIAlign(names, 7, 2)
    theirs = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    assert repr(ours) == repr(theirs)
    out = ours(x, boxes, shapes)
    # the forward is roi_align's, which equals torchvision's bit for bit on CPU
    assert torch.equal(out, theirs(x, boxes, shapes))
    # the boxes also as one Tensor[K, 5], as roi_align takes them (and as one level
    # took them; several levels gave "map_levels: boxes must be Tensor[K, 4]" until
    # 2026-11-28)
    rows = torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=dtype), b], 1)
                      for i, b in enumerate(boxes)])  # fmt: skip
    assert torch.equal(ours(x, rows, shapes), out)
    grad = torch.randn_like(out)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    ours(leaves, boxes, shapes).backward(grad)
    tv_leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    theirs(tv_leaves, boxes, shapes).backward(grad)
    for k in names:  # roi_align's backward divides before weighting: a last-bit difference
        torch.testing.assert_close(leaves[k].grad, tv_leaves[k].grad)


@pytest.mark.parametrize("aligned,ratio", [(False, 2), (True, 0), (True, 1)])
def test_numba_equals_reference_bitwise(rng, aligned, ratio):
    features = pyramid(rng, torch.float64, size=32)
    rois = as_tensor(random_rois(rng, 2, 24, 128, 128), torch.float64)
    grad = as_tensor(rng.standard_normal((24, 5, 3, 3)), torch.float64)
    fast = run("numba", features, rois, 3, ratio, aligned, grad)
    ref = run("reference", features, rois, 3, ratio, aligned, grad)
    assert torch.equal(fast[0], ref[0])
    for a, b in zip(fast[1], ref[1], strict=True):
        assert torch.equal(a, b)


def test_equals_roi_align_level_by_level(rng):
    features = pyramid(rng, size=32)
    rois = as_tensor(random_rois(rng, 2, 30, 128, 128, min_size=1), torch.float32)
    levels = torch.from_numpy(rng.integers(0, 4, 30))
    out = roiops.multi_scale_roi_align(features, rois, 2, SCALES, 2, True, levels=levels)
    for level in range(4):
        pick = levels == level
        expected = roiops.roi_align(features[level], rois[pick], 2, SCALES[level], 2, True)
        assert torch.equal(out[pick], expected)


EMPTY_LEVEL_CASES = {
    "multi_scale_roi_align": (
        lambda f, r, lv: roiops.multi_scale_roi_align(f, r, 2, [1.0, 0.5], 2, True, levels=lv),
        lambda x, r, s: roiops.roi_align(x, r, 2, s, 2, True),
    ),
    "multi_scale_roi_align_rotated": (
        lambda f, r, lv: roiops.multi_scale_roi_align_rotated(
            f, r, 2, [1.0, 0.5], 2, levels=lv
        ),  # fmt: skip
        lambda x, r, s: roiops.roi_align_rotated(x, r, 2, s, 2),
    ),
    "multi_scale_roi_pool": (
        lambda f, r, lv: roiops.multi_scale_roi_pool(f, r, 2, [1.0, 0.5], levels=lv),
        lambda x, r, s: roiops.roi_pool(x, r, 2, s),
    ),
}


@pytest.mark.parametrize("backend", ["numba", "reference", "triton"])
@pytest.mark.parametrize("op", list(EMPTY_LEVEL_CASES))
def test_a_level_without_rows_or_columns(rng, backend, op):
    # a RoI on a level with nothing to read pools zeros and sends no gradient; the other
    # levels' RoIs are pooled as ever (until 2026-11-28 every output was zero, the
    # backward of the RoIAlign pyramid wrote outside its level's gradient, corrupting the
    # heap, and the rotated pyramid's gradients were all zero)
    pyramid_op, level_op = EMPTY_LEVEL_CASES[op]
    boxes = [
        [0, 0.2, 0.3, 5.0, 4.2],
        [1, -0.8, -0.9, 6.1, 7.2],
        [0, 0.3, 0.1, 3.0, 2.0],
        [1, -0.6, 0.4, 0.9, 0.8],
    ]  # (near the origin: the points reach cell -1)
    rois = torch.tensor(boxes, dtype=torch.float64)
    if "rotated" in op:
        rois = torch.cat([rois[:, :1], (rois[:, 1:3] + rois[:, 3:]) / 2,
                          (rois[:, 3:] - rois[:, 1:3]).abs(), rois[:, 1:2]], 1)  # fmt: skip
    levels = torch.tensor([0, 1, 1, 0])
    for empty in ((2, 3, 0, 7), (2, 3, 6, 0)):
        fine = as_tensor(rng.standard_normal((2, 3, 12, 14)), torch.float64).requires_grad_()
        coarse = torch.zeros(empty, dtype=torch.float64, requires_grad=True)
        with roiops.use_backend(backend):
            out = pyramid_op([fine, coarse], rois, levels)
            grads = torch.autograd.grad(out.square().sum(), [fine, coarse])
            on_fine = level_op(fine, rois[levels == 0], 1.0)
            expected = torch.autograd.grad(on_fine.square().sum(), [fine])[0]
        assert torch.equal(out[levels == 0], on_fine)
        assert torch.equal(out[levels == 1], torch.zeros_like(out[levels == 1]))
        assert grads[1].shape == empty
        if backend == "triton":  # (fixed-point sums, scaled to each call's largest share)
            torch.testing.assert_close(grads[0], expected, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(grads[0], expected)


def test_backward_deterministic_across_thread_counts(rng):
    features = pyramid(rng, size=32, channels=40)
    rois = as_tensor(random_rois(rng, 2, 60, 128, 128, min_size=4), torch.float32)
    grad = as_tensor(rng.standard_normal((60, 40, 3, 3)), torch.float32)
    runs = results_across_thread_counts(
        lambda: torch.cat([g.flatten() for g in run("numba", features, rois, 3, 2, False, grad)[1]])
    )
    assert all(torch.equal(r, runs[0]) for r in runs)


def test_gradcheck_and_opcheck(rng):
    features = [f.requires_grad_() for f in pyramid(rng, torch.float64, channels=2, size=16)]
    rois = as_tensor(random_rois(rng, 2, 8, 64, 64, min_size=2), torch.float64)
    levels = torch.from_numpy(rng.integers(0, 4, 8))

    def f(*fs):
        return roiops.multi_scale_roi_align(list(fs), rois, 2, SCALES, 2, True, levels=levels)

    assert torch.autograd.gradcheck(f, tuple(features))
    args = (features, rois, levels, SCALES, 2, 2, 2, True)
    torch.library.opcheck(torch.ops.roiops.multi_scale_roi_align, args)


def test_bad_arguments(rng):
    features = pyramid(rng, size=16)
    rois = torch.tensor([[0, 1.0, 1, 30, 30]])
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 4\)"):
        roiops.multi_scale_roi_align(features, rois, 2, SCALES, levels=torch.tensor([4]))
    with pytest.raises(TypeError, match="levels must be an integer tensor"):
        roiops.multi_scale_roi_align(features, rois, 2, SCALES, levels=torch.tensor([1.5]))
    with pytest.raises(ValueError, match="4 feature maps but 3 scales"):
        roiops.multi_scale_roi_align(features, rois, 2, SCALES[:3])
    with pytest.raises(ValueError, match="1 to 5 maps"):
        roiops.multi_scale_roi_align(features * 2, rois, 2, SCALES * 2)
    with pytest.raises(ValueError, match="every level needs the same N, C"):
        roiops.multi_scale_roi_align([features[0], features[1][:, :3]], rois, 2, SCALES[:2])
    with pytest.raises(TypeError, match="features must be a list"):
        roiops.multi_scale_roi_align(features[0], rois, 2, SCALES)
    empty = roiops.multi_scale_roi_align(features, torch.zeros(0, 5), 2, SCALES)
    assert empty.shape == (0, 5, 2, 2)
    # the RoIPool pyramid's errors name it (they named multi_scale_roi_align until
    # 2026-11-28)
    with pytest.raises(ValueError, match=r"multi_scale_roi_pool: boxes' batch indices"):
        roiops.multi_scale_roi_pool(features, rois + torch.tensor([5.0, 0, 0, 0, 0]), 2, SCALES)
    with pytest.raises(ValueError, match=r"multi_scale_roi_pool: levels must lie"):
        roiops.multi_scale_roi_pool(features, rois, 2, SCALES, levels=torch.tensor([4]))


# ------------------------------------------------------------------ RoIPool over a pyramid
def test_multi_scale_roi_pool_equals_roi_pool_level_by_level(rng):
    features = pyramid(rng, size=32)
    rois = as_tensor(random_rois(rng, 2, 30, 128, 128, min_size=1), torch.float32)
    levels = torch.from_numpy(rng.integers(0, 4, 30))
    out = roiops.multi_scale_roi_pool(features, rois, 3, SCALES, levels=levels)
    for level in range(4):
        pick = levels == level
        assert torch.equal(
            out[pick], roiops.roi_pool(features[level], rois[pick], 3, SCALES[level])
        )


def test_multi_scale_roi_pool_numba_equals_reference_and_opcheck(rng):
    features = pyramid(rng, torch.float64, size=32)
    rois = as_tensor(random_rois(rng, 2, 24, 128, 128), torch.float64)
    levels = torch.from_numpy(rng.integers(0, 4, 24))
    grad = as_tensor(rng.standard_normal((24, 5, 2, 3)), torch.float64)
    results = []
    for backend in ("numba", "reference"):
        leaves = [f.clone().requires_grad_() for f in features]
        with roiops.use_backend(backend):
            out = roiops.multi_scale_roi_pool(leaves, rois, (2, 3), SCALES, levels=levels)
            out.backward(grad)
        results.append((out.detach(), [f.grad for f in leaves]))
    (out, grads), (ref_out, ref_grads) = results
    assert torch.equal(out, ref_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads, strict=True))
    leaves = [f.clone().requires_grad_() for f in features]
    args = (leaves, rois, levels, SCALES, 2, 3)
    torch.library.opcheck(torch.ops.roiops.multi_scale_roi_pool, args)


@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIAlignV2", "ROIPool"])
def test_roi_pooler_is_detectron2_s_composition(rng, pooler_type):
    # detectron2's ROIPooler: levels by its assign_boxes_to_levels, then one pooler per level
    features = pyramid(rng, size=64)
    boxes = [as_tensor(boxes_over(rng, n), torch.float32) for n in (30, 20)]
    out = roiops.ROIPooler(7, SCALES, 2, pooler_type)(features, boxes)
    levels = roiops.map_levels(boxes, 2, 5, eps=1e-8, convention="detectron2")
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
    )
    for level in range(4):
        pick = levels == level
        if pooler_type == "ROIPool":
            expected = roiops.roi_pool(features[level], rois[pick], 7, SCALES[level])
        else:
            aligned = pooler_type == "ROIAlignV2"
            expected = roiops.roi_align(features[level], rois[pick], 7, SCALES[level], 2, aligned)
        assert torch.equal(out[pick], expected)
    with pytest.raises(ValueError, match="pooler_type must be one of"):
        roiops.ROIPooler(7, SCALES, 2, "ROIAlignV3")


class Boxes:
    """detectron2's ``Boxes`` as its ROI heads hand them to ``ROIPooler`` (a stand-in:
    detectron2 is not installable here): the boxes are its ``.tensor``."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_roi_pooler_takes_detectron2_s_boxes(rng):
    features = pyramid(rng, size=64)
    boxes = [as_tensor(boxes_over(rng, n), torch.float32) for n in (30, 20)]
    for pooler_type in ("ROIAlignV2", "ROIPool"):
        pooler = roiops.ROIPooler(7, SCALES, 2, pooler_type)
        out = pooler(features, boxes)
        assert torch.equal(pooler(features, [Boxes(b) for b in boxes]), out)
        rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1)
                          for i, b in enumerate(boxes)])  # fmt: skip
        assert torch.equal(pooler(features, rois), out)  # (a Tensor[K, 5] too)
    with pytest.raises(TypeError, match="boxes"):
        pooler(features, [boxes[0].numpy(), boxes[1]])
    # one box list per image, as detectron2 asserts (a shorter list was taken until
    # 2026-11-28, its images' boxes pooled and the rest left out)
    with pytest.raises(ValueError, match="box_lists has 1 entries, one per image, but the fe"):
        pooler(features, boxes[:1])


# -------------------------------------------------------- rotated RoIAlign over a pyramid
def rotated_boxes_over(rng, count, image=256):
    """Rotated boxes ``(cx, cy, w, h, angle in degrees)`` of 16 to 1024 px a side
    centred in an image: every level of four from 1/4 gets some."""
    side = np.exp(rng.uniform(np.log(16), np.log(1024), (count, 2)))
    centre = rng.uniform(0, image, (count, 2))
    angle = rng.uniform(-180, 180, (count, 1))
    return np.concatenate([centre, side, angle], axis=1)


def rotated_rois_over(rng, batch, count, image=256):
    batch_index = rng.integers(0, batch, (count, 1))
    return np.concatenate([batch_index, rotated_boxes_over(rng, count, image)], axis=1)


def run_rotated(backend, features, rois, output_size, ratio, grad, **kw):
    leaves = [f.detach().clone().requires_grad_() for f in features]
    with roiops.use_backend(backend):
        out = roiops.multi_scale_roi_align_rotated(leaves, rois, output_size, SCALES, ratio, **kw)
        out.backward(grad)
    return out.detach(), [f.grad for f in leaves]


def test_map_levels_of_rotated_boxes():
    # detectron2's RotatedBoxes.area() is w * h, whatever the angle
    sides = torch.tensor([[112.0, 112], [448, 112], [448, 448], [10, 10], [2000, 50]])
    angles = torch.tensor([[0.0], [30], [-90], [45], [170]])
    boxes = torch.cat([torch.full((5, 2), 50.0), sides, angles], 1)
    levels = roiops.map_levels(boxes, 2, 5, rotated=True)
    assert levels.tolist() == [1, 2, 3, 0, 2]  # sqrt(area) 112, 224, 448, 10, 316
    detectron2 = torch.floor(4 + torch.log2(torch.sqrt(sides[:, 0] * sides[:, 1]) / 224 + 1e-8))
    assert torch.equal(
        roiops.map_levels(boxes, 2, 5, eps=1e-8, convention="detectron2", rotated=True),
        detectron2.clamp(2, 5).to(torch.int64) - 2,
    )
    with pytest.raises(ValueError, match=r"boxes must be Tensor\[K, 5\]"):
        roiops.map_levels(boxes[:, :4], 2, 5, rotated=True)


@pytest.mark.parametrize(
    "ratio,kw",
    [(2, {}), (0, {}), (1, {"aligned": False, "angle_unit": "radians", "clockwise": True})],
)
def test_rotated_numba_equals_reference_bitwise(rng, ratio, kw):
    features = pyramid(rng, torch.float64, size=32)
    rois = as_tensor(rotated_rois_over(rng, 2, 20, 128), torch.float64)
    if kw:
        rois[:, 5] = torch.deg2rad(rois[:, 5])
    grad = as_tensor(rng.standard_normal((20, 5, 2, 3)), torch.float64)
    fast = run_rotated("numba", features, rois, (2, 3), ratio, grad, **kw)
    ref = run_rotated("reference", features, rois, (2, 3), ratio, grad, **kw)
    assert torch.equal(fast[0], ref[0])
    for a, b in zip(fast[1], ref[1], strict=True):
        assert torch.equal(a, b)


def test_rotated_equals_roi_align_rotated_level_by_level(rng):
    features = pyramid(rng, size=32)
    rois = as_tensor(rotated_rois_over(rng, 2, 40, 128), torch.float32)
    levels = roiops.map_levels(rois[:, 1:], 2, 5, rotated=True)
    assert len(levels.unique()) == 4
    out = roiops.multi_scale_roi_align_rotated(features, rois, 3, SCALES, 2)
    for level in range(4):
        pick = levels == level
        expected = roiops.roi_align_rotated(features[level], rois[pick], 3, SCALES[level], 2)
        assert torch.equal(out[pick], expected)


def test_rotated_backward_deterministic_across_thread_counts(rng):
    features = pyramid(rng, size=32, channels=40)
    rois = as_tensor(rotated_rois_over(rng, 2, 60, 128), torch.float32)
    grad = as_tensor(rng.standard_normal((60, 40, 3, 3)), torch.float32)
    runs = results_across_thread_counts(
        lambda: torch.cat(
            [g.flatten() for g in run_rotated("numba", features, rois, 3, 0, grad)[1]]
        )
    )
    assert all(torch.equal(r, runs[0]) for r in runs)


def test_rotated_gradcheck_and_opcheck(rng):
    features = [f.requires_grad_() for f in pyramid(rng, torch.float64, channels=2, size=16)]
    rois = as_tensor(rotated_rois_over(rng, 2, 8, 64), torch.float64)
    levels = torch.from_numpy(rng.integers(0, 4, 8))

    def f(*fs):
        return roiops.multi_scale_roi_align_rotated(list(fs), rois, 2, SCALES, 2, levels=levels)

    assert torch.autograd.gradcheck(f, tuple(features))
    args = (features, rois, levels, SCALES, 2, 2, 2, True, True, False)
    torch.library.opcheck(torch.ops.roiops.multi_scale_roi_align_rotated, args)


def test_rotated_bad_arguments(rng):
    features = pyramid(rng, size=16)
    rois = torch.tensor([[0, 20.0, 20, 30, 10, 15]])
    op = roiops.multi_scale_roi_align_rotated
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 4\)"):
        op(features, rois, 2, SCALES, levels=torch.tensor([4]))
    with pytest.raises(ValueError, match="negative width or height"):
        op(features, torch.tensor([[0, 20.0, 20, -3, 10, 15]]), 2, SCALES)
    with pytest.raises(ValueError, match="NaN or infinite"):
        op(features, torch.tensor([[0, 20.0, 20, 3, 10, float("nan")]]), 2, SCALES)
    with pytest.raises(ValueError, match=r"shape \[K, 6\]"):
        op(features, rois[:, :5], 2, SCALES)
    with pytest.raises(ValueError, match="angle_unit"):
        op(features, rois, 2, SCALES, angle_unit="turns")
    with pytest.raises(ValueError, match="4 feature maps but 3 scales"):
        op(features, rois, 2, SCALES[:3])
    empty = op(features, torch.zeros(0, 6), 2, SCALES)
    assert empty.shape == (0, 5, 2, 2)


class RotatedBoxes(Boxes):
    """detectron2's ``RotatedBoxes`` (a stand-in): ``(cx, cy, w, h, angle)`` rows in
    ``.tensor``."""


def test_roi_pooler_rotated_is_detectron2_s_composition(rng):
    # detectron2: levels by assign_boxes_to_levels (RotatedBoxes.area() = w * h), then
    # ROIAlignRotated(output_size, scale, sampling_ratio) level by level
    features = pyramid(rng, size=64)
    boxes = [as_tensor(rotated_boxes_over(rng, n), torch.float32) for n in (30, 20)]
    pooler = roiops.ROIPooler(7, SCALES, 2, "ROIAlignRotated")
    out = pooler(features, [RotatedBoxes(b) for b in boxes])
    levels = roiops.map_levels(boxes, 2, 5, eps=1e-8, convention="detectron2", rotated=True)
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
    )
    for level in range(4):
        pick = levels == level
        expected = roiops.roi_align_rotated(features[level], rois[pick], 7, SCALES[level], 2)
        assert torch.equal(out[pick], expected)
    assert torch.equal(pooler(features, boxes), out)


@pytest.mark.parametrize("op", ["align", "pool", "rotated"])
def test_pyramid_ops_with_boxes_that_require_grad(rng, op):
    # boxes that require grad (a box head's output) over levels that do not (a frozen
    # backbone): the pyramid ops send the boxes no gradient and must not fail backward,
    # eagerly or through the dispatcher (which the profiler makes every call take)
    features = pyramid(rng, channels=2, size=16)
    rois = as_tensor(random_rois(rng, 2, 6, 64, 64, min_size=2), torch.float32)
    if op == "rotated":
        rois = torch.cat([rois, torch.full((6, 1), 30.0)], 1)
    call = {
        "align": lambda fs, r: roiops.multi_scale_roi_align(fs, r, 2, SCALES, 2),
        "pool": lambda fs, r: roiops.multi_scale_roi_pool(fs, r, 2, SCALES),
        "rotated": lambda fs, r: roiops.multi_scale_roi_align_rotated(fs, r, 2, SCALES, 2),
    }[op]
    for profiled in (False, True):
        boxes = rois.clone().requires_grad_()
        with torch.autograd.profiler.profile(enabled=profiled):
            out = call(features, boxes)
            out.sum().backward()
        assert out.requires_grad and boxes.grad is None
    # (and with one level that requires grad, its gradient is the one of all levels)
    leaves = [f.clone().requires_grad_(i == 1) for i, f in enumerate(features)]
    call(leaves, rois.clone().requires_grad_()).sum().backward()
    all_leaves = [f.clone().requires_grad_() for f in features]
    call(all_leaves, rois).sum().backward()
    assert torch.equal(leaves[1].grad, all_leaves[1].grad)
