"""riroi_align_rotated (ReDet's rotation-invariant RoIAlign): mmcv's stored numbers, the
two-step computation against the per-point reference, hand-checkable orientation turns,
rotated RoIAlign at angle 0, gradients, mmrotate's extractor, bad input."""

import math

import numpy as np
import pytest
import torch
from conftest import as_tensor, results_across_thread_counts
from test_roi_align_rotated import rotated_rois
from torch.library import opcheck

import roiops
from roiops.ops.riroi_align_rotated import orientation_shift, turn, turn_backward
from roiops.reference import riroi_align_rotated as reference

# mmcv's tests/test_ops/test_riroi_align_rotated.py: 8 orientations of one channel group,
# output 2 x 2, spatial_scale 1, num_samples 2, counter-clockwise; a backward from ones
# (mmcv's numbers are printed to 4 decimals)
MMCV_INPUT = [[[[1.0, 2], [3, 4]], [[1, 2], [4, 3]], [[4, 3], [2, 1]], [[1, 2], [5, 6]],
               [[3, 4], [7, 8]], [[9, 10], [13, 14]], [[11, 12], [15, 16]],
               [[1, 1], [2, 2]]]]  # fmt: skip
MMCV_ROIS = [[0.0, 0.5, 0.5, 1, 1, math.pi / 3], [0, 1, 1, 3, 3, math.pi / 2]]
MMCV_OUTPUT = [
    [[[1.8425, 1.3516], [2.3151, 1.8241]], [[2.4779, 1.7416], [3.2173, 2.5632]],
     [[2.7149, 2.2638], [2.6540, 2.3673]], [[2.9461, 2.8638], [2.8028, 2.7205]],
     [[4.1943, 2.7214], [5.6119, 4.1391]], [[7.5276, 6.0547], [8.9453, 7.4724]],
     [[12.1943, 10.7214], [13.6119, 12.1391]], [[9.5489, 8.4237], [10.5763, 9.4511]]],
    [[[7.6562, 12.5625], [4.0000, 6.6250]], [[1.0000, 1.3125], [0.5000, 0.6562]],
     [[1.6562, 1.9375], [1.0000, 1.3125]], [[1.8438, 2.0547], [0.7500, 1.1562]],
     [[0.8438, 3.0625], [0.2500, 1.1875]], [[2.6562, 2.5625], [1.5000, 1.6250]],
     [[3.6562, 4.5625], [2.0000, 2.6250]], [[6.6562, 10.5625], [3.5000, 5.6250]]],
]  # fmt: skip
MMCV_GRAD = [[[[1.4727, 1.5586], [1.5586, 1.6602]]] * 8]

# the two-step computation against the per-point reference: float rounding only
TOL = {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}


def case(rng, dtype=torch.float32, k=9, groups=2, orientations=8, size=(3, 4)):
    x = as_tensor(rng.standard_normal((2, groups * orientations, 12, 14)), dtype)
    rois = rotated_rois(rng, 2, k, 24, 28, degrees=False)
    rois[:, 5] *= 2.5  # angles over several turns, both ways
    grad = as_tensor(rng.standard_normal((k, groups * orientations, *size)), dtype)
    return x, as_tensor(rois, dtype), grad


def run(backend, x, rois, grad, size, scale, ratio, orientations=8, clockwise=False):
    """(output, input gradient) on ``backend``."""
    xb = x.detach().clone().requires_grad_()
    with roiops.use_backend(backend):
        out = roiops.riroi_align_rotated(xb, rois, size, scale, ratio, orientations, clockwise)
        out.backward(grad)
    return out.detach(), xb.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mmcv_stored_values(dtype):
    x = torch.tensor(MMCV_INPUT, dtype=dtype, requires_grad=True)
    layer = roiops.mmcv.RiRoIAlignRotated((2, 2), 1.0, 2, 8, False)
    out = layer(x, torch.tensor(MMCV_ROIS, dtype=dtype))
    out.backward(torch.ones_like(out))
    close = dict(rtol=0, atol=5.1e-5)  # (4 decimals)
    torch.testing.assert_close(out, torch.tensor(MMCV_OUTPUT, dtype=dtype), **close)
    torch.testing.assert_close(x.grad, torch.tensor(MMCV_GRAD, dtype=dtype), **close)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ratio,clockwise,size", [(2, False, (3, 4)), (0, True, (2, 2)),
                                                  (1, True, (3, 4))])  # fmt: skip
def test_two_steps_match_the_per_point_reference(rng, dtype, ratio, clockwise, size):
    # rotated RoIAlign then the orientation turn is the per-point formula up to float
    # rounding, forward and backward; the reference backend runs that formula itself
    x, rois, grad = case(rng, dtype, size=size)
    expected = reference.riroi_align_rotated_forward(
        x.numpy(), rois.numpy(), 0.5, *size, ratio, 8, clockwise
    )
    expected_grad = reference.riroi_align_rotated_backward(
        grad.numpy(), rois.numpy(), 0.5, *size, ratio, 8, tuple(x.shape), clockwise
    )
    out, gx = run("numba", x, rois, grad, size, 0.5, ratio, 8, clockwise)
    torch.testing.assert_close(out, torch.from_numpy(expected), **TOL[dtype])
    torch.testing.assert_close(gx, torch.from_numpy(expected_grad), **TOL[dtype])
    out, gx = run("reference", x, rois, grad, size, 0.5, ratio, 8, clockwise)
    assert torch.equal(out, torch.from_numpy(expected))
    assert torch.equal(gx, torch.from_numpy(expected_grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ratio,clockwise", [(2, True), (0, False)])
def test_numba_forward_is_the_two_steps_bit_for_bit(rng, dtype, ratio, clockwise):
    # the CPU forward turns each bin's means as it writes them: the same arithmetic as
    # rotated RoIAlign's kernel followed by the turn's torch formulation
    x, rois, _ = case(rng, dtype)
    fused = roiops.riroi_align_rotated(x, rois, (3, 4), 0.5, ratio, 8, clockwise)
    pooled = roiops.roi_align_rotated(x, rois, (3, 4), 0.5, ratio, False, "radians", clockwise)
    with roiops.use_backend("reference"):
        two_steps = turn(pooled, rois[:, 5], 8)
    assert torch.equal(fused, two_steps)


def test_angle_zero_is_rotated_roi_align_bit_for_bit(rng):
    # no turn: weights 1 and 0 (the second orientation's term is +0)
    x, rois, _ = case(rng, torch.float32)
    rois[:, 5] = 0
    for ratio in (0, 2):
        out = roiops.riroi_align_rotated(x, rois, (3, 4), 0.5, ratio, 8, True)
        plain = roiops.roi_align_rotated(x, rois, (3, 4), 0.5, ratio, False, "radians", True)
        assert torch.equal(out, plain)


def test_orientation_turn_by_hand():
    # every channel constant: rotated RoIAlign of a box inside the map gives the channel's
    # value, so the output is the turn alone. angle * 4 / (2 pi) = 1.25: s = 1, f = 0.25:
    # out[o] = 0.75 * v[o - 1] + 0.25 * v[o]
    values = torch.tensor([0.0, 10, 20, 30], dtype=torch.float64)
    x = values.view(1, 4, 1, 1).expand(1, 4, 9, 9).repeat(1, 2, 1, 1)  # 2 groups
    x[:, 4:] *= -1
    rois = torch.tensor([[0.0, 4.5, 4.5, 4, 3, 1.25 * math.pi / 2]], dtype=torch.float64)
    out = roiops.riroi_align_rotated(x, rois, 2, 1.0, 2, 4)
    turned = torch.tensor([22.5, 2.5, 12.5, 22.5], dtype=torch.float64)
    expected = torch.cat([turned, -turned]).view(1, 8, 1, 1).expand(1, 8, 2, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # a whole turn more (or less) changes nothing; half a turn more moves by O / 2
    for extra, move in ((2 * math.pi, 0), (-2 * math.pi, 0), (math.pi, 2)):
        again = rois.clone()
        again[0, 5] += extra
        x_moved = torch.cat([x[:, :4].roll(move, 1), x[:, 4:].roll(move, 1)], 1)
        # (the box is symmetric under half a turn, so only the channels move)
        torch.testing.assert_close(
            roiops.riroi_align_rotated(x, again, 2, 1.0, 2, 4),
            roiops.riroi_align_rotated(x_moved, rois, 2, 1.0, 2, 4), rtol=0, atol=1e-12,
        )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orientation_shift_is_the_reference_s_for_any_angle(rng, dtype):
    # mmcv's arithmetic (theta * O in the dtype, / 2 pi in float64), bit for bit, for
    # angles over many turns, both ways, and exact multiples of a step
    angles = np.concatenate([rng.uniform(-30, 30, 500), np.arange(-16, 17) * np.pi / 4])
    t = as_tensor(angles, dtype)
    for orientations in (1, 3, 8, 16):
        shift, right, left = orientation_shift(t, orientations)
        T = np.float32 if dtype == torch.float32 else np.float64
        for i, a in enumerate(t.numpy()):
            s, r, f = reference.orientation_shift(a, orientations, T)
            assert (shift[i].item(), right[i].item(), left[i].item()) == (s, r, f)
        assert ((0 <= left) & (left < 1)).all()
    # any value gives a shift in range (CUDA takes every angle; NaN weights mark the bad)
    odd = torch.tensor([math.nan, math.inf, -math.inf, 1e30, -1e30, 3e18], dtype=dtype)
    shift, right, left = orientation_shift(odd, 8)
    assert ((0 <= shift) & (shift < 8)).all()
    assert left[:3].isnan().all() and right[:3].isnan().all()
    # so the turn of a RoI with such an angle is NaN (as its pooled values are on CUDA),
    # and the others' are untouched
    pooled = torch.randn(6, 16, 2, 2, dtype=dtype)
    turned = turn(pooled, odd, 8)
    assert turned[:3].isnan().all() and turned[3:].isfinite().all()
    assert torch.equal(turned[3:], turn(pooled[3:], odd[3:], 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_turn_is_torch_s_gathers_bit_for_bit(rng, dtype):
    # the CPU kernel of the orientation step against its torch formulation (which the
    # other backends run), forward (shift s, next orientation) and backward (-s, previous)
    pooled = as_tensor(rng.standard_normal((11, 24, 3, 4)), dtype)
    angles = as_tensor(rng.uniform(-20, 20, 11), dtype)
    for orientations in (1, 3, 8):
        for step in (turn, turn_backward):
            with roiops.use_backend("reference"):
                expected = step(pooled, angles, orientations)
            assert torch.equal(step(pooled, angles, orientations), expected)


def test_backward_deterministic_across_thread_counts(rng):
    x, rois, grad = case(rng, k=40, groups=3)
    runs = results_across_thread_counts(lambda: run("numba", x, rois, grad, (3, 4), 0.5, 0)[1])
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


def test_gradcheck_and_opcheck(rng):
    x, rois, _ = case(rng, torch.float64, k=4, groups=1, orientations=4)
    x.requires_grad_()
    fn = lambda t: roiops.riroi_align_rotated(t, rois, (2, 3), 0.5, 2, 4, True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    opcheck(torch.ops.roiops.riroi_align_rotated.default, (x, rois, 0.5, 2, 3, 2, 4, True))
    pooled = torch.randn(4, 8, 2, 3, dtype=torch.float64, requires_grad=True)
    opcheck(torch.ops.roiops.turn_orientations.default, (pooled, rois[:, 5], 4))
    turn = lambda p: torch.ops.roiops.turn_orientations(p, rois[:, 5], 4)  # noqa: E731
    assert torch.autograd.gradcheck(turn, (pooled,))


def test_lists_half_precision_and_empty(rng):
    x, rois, _ = case(rng, torch.float32, k=6)
    out = roiops.riroi_align_rotated(x, rois, 2, 0.5, 2)
    lists = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.cat([torch.nonzero(rois[:, 0] == i).squeeze(1) for i in range(2)])
    assert torch.equal(roiops.riroi_align_rotated(x, lists, 2, 0.5, 2), out[order])
    for dtype in (torch.float16, torch.bfloat16):
        low = roiops.riroi_align_rotated(x.to(dtype), rois, 2, 0.5, 2)
        assert low.dtype == dtype
        torch.testing.assert_close(low.float(), out, rtol=2e-2, atol=3e-2)
    xe = x.clone().requires_grad_()
    empty = roiops.riroi_align_rotated(xe, torch.zeros(0, 6), 2, 0.5, 2)
    assert empty.shape == (0, 16, 2, 2)
    empty.sum().backward()
    assert torch.equal(xe.grad, torch.zeros_like(x))
    # maps without rows or columns: zeros on every backend (the reference's points near
    # the origin once read cell -1 of an empty axis)
    near_origin = torch.tensor([[0, 0.2, 0.3, 1.0, 1.0, 0.1]])
    for shape in ((1, 8, 0, 5), (1, 8, 5, 0)):
        for backend in ("numba", "reference"):
            xz = torch.zeros(shape, requires_grad=True)
            with roiops.use_backend(backend):
                out = roiops.riroi_align_rotated(xz, near_origin, 2, 1.0, 2, 4)
                out.sum().backward()
            assert torch.equal(out, torch.zeros(1, 8, 2, 2)) and xz.grad.shape == shape


def test_bad_arguments(rng):
    x, rois, _ = case(rng, torch.float32, k=3)
    op = roiops.riroi_align_rotated
    with pytest.raises(ValueError, match="16 channels, not a multiple of num_orientations 3"):
        op(x, rois, 2, 0.5, 2, 3)
    with pytest.raises(ValueError, match="num_orientations must be at least 1"):
        op(x, rois, 2, 0.5, 2, 0)
    for bad in (True, 2.0, "8"):
        with pytest.raises(TypeError, match="num_orientations must be an integer"):
            op(x, rois, 2, 0.5, 2, bad)
    with pytest.raises(ValueError, match=r"riroi_align_rotated: boxes .* shape \[K, 6\]"):
        op(x, rois[:, :5], 2)
    # value errors name this op (its first step is roi_align_rotated's kernels)
    with pytest.raises(ValueError, match="riroi_align_rotated: boxes' batch indices"):
        op(x, rois + torch.tensor([2.0, 0, 0, 0, 0, 0]), 2)
    nan = rois.clone()
    nan[1, 5] = math.nan
    with pytest.raises(ValueError, match="riroi_align_rotated: boxes"):
        op(x, nan, 2)
    # a finite angle whose product with O overflows float32 (it would give NaN outputs)
    huge = rois.clone()
    huge[2, 5] = -3e38
    with pytest.raises(ValueError, match="box 2's angle -3e.38 times num_orientations 8 overf"):
        op(x, huge, 2)
    assert torch.isfinite(op(x.double(), huge.double(), 2)).all()
    with pytest.raises(TypeError, match="clockwise must be a bool"):
        op(x, rois, 2, 0.5, 2, 8, 1)
    # the orientation step's own op (the pyramid extractor's) checks its count too
    pooled = torch.zeros(3, 16, 2, 2)
    with pytest.raises(ValueError, match="turn_orientations: num_orientations must be at"):
        torch.ops.roiops.turn_orientations(pooled, rois[:, 5], 0)
    with pytest.raises(ValueError, match="turn_orientations: input has 16 channels"):
        torch.ops.roiops.turn_orientations(pooled, rois[:, 5], 3)
    with pytest.raises(TypeError, match="spatial_scale is required"):
        roiops.mmcv.RiRoIAlignRotated(7)
    with pytest.raises(TypeError, match="out_size and output_size"):
        roiops.mmcv.RiRoIAlignRotated(7, 1.0, output_size=7)


def test_mmcv_layer_names_and_repr(rng):
    x, rois, _ = case(rng, torch.float32, k=4)
    layer = roiops.RiRoIAlignRotated(out_size=3, spatial_scale=0.5, num_samples=2,
                                     num_orientations=8, clockwise=True)  # fmt: skip
    same = roiops.mmcv.RiRoIAlignRotated(output_size=3, spatial_scale=0.5, sampling_ratio=2,
                                         clockwise=True)  # fmt: skip
    assert torch.equal(layer(x, rois), same(x, rois))
    assert torch.equal(layer(x, rois), roiops.mmcv.riroi_align_rotated(x, rois, 3, 0.5, 2, 8, True))
    assert (layer.output_size, layer.sampling_ratio) == (3, 2)
    assert repr(layer) == (
        "RiRoIAlignRotated(out_size=3, spatial_scale=0.5, num_samples=2, num_orientations=8, "
        "clockwise=True)"
    )


def mmrotate_forward(layers, feats, rois, finest_scale, roi_scale_factor=None):
    """mmrotate's RotatedSingleRoIExtractor.forward, written out (its level loop)."""
    out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], 7, 7)
    scale = torch.sqrt(rois[:, 3] * rois[:, 4])
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, len(feats) - 1).long()
    if roi_scale_factor is not None:
        rois = rois.clone()
        rois[:, 3] *= roi_scale_factor
        rois[:, 4] *= roi_scale_factor
    for i, layer in enumerate(layers):
        inds = torch.nonzero(levels == i).squeeze(1)
        if inds.numel():
            out[inds] = layer(feats[i], rois[inds])
        else:  # (mmrotate: every level in the graph)
            out = out + feats[i].sum() * 0.0
    return out


@pytest.mark.parametrize("roi_scale_factor", [None, 1.5])
def test_mmrotate_extractor_in_one_launch(rng, roi_scale_factor):
    # ReDet's config: every level pooled in one launch then turned, mmrotate's loop's
    # numbers (float rounding: the pyramid kernel and the single-level one), backward too
    config = dict(type="RiRoIAlignRotated", out_size=7, num_samples=2, num_orientations=8,
                  clockwise=True)  # fmt: skip
    strides = [4, 8, 16, 32]
    extractor = roiops.SingleRoIExtractor(config, 16, strides)
    feats = [as_tensor(rng.standard_normal((2, 16, 64 >> i, 80 >> i)), torch.float64)
             for i in range(4)]  # fmt: skip
    rois = as_tensor(rotated_rois(rng, 2, 40, 256, 320, degrees=False), torch.float64)
    rois[:, 3:5] = torch.from_numpy(rng.uniform(8, 400, (40, 2)))
    layers = [roiops.mmcv.RiRoIAlignRotated(7, 1 / s, 2, 8, True) for s in strides]
    leaves = [[f.clone().requires_grad_() for f in feats] for _ in range(2)]
    out = extractor(leaves[0], rois, roi_scale_factor)
    expected = mmrotate_forward(layers, leaves[1], rois, 56, roi_scale_factor)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    for a, b in zip(leaves[0], leaves[1], strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    # one level: the layer itself
    assert torch.equal(extractor(feats[:1], rois), layers[0](feats[0], rois))
    with pytest.raises(ValueError, match="SingleRoIExtractor: input has 12 channels"):
        roiops.SingleRoIExtractor(dict(config, num_orientations=5), 12, strides)(
            [f[:, :12] for f in feats], rois
        )
