"""BezierAlign (ABCNet): the Numba kernels against the reference, the reference against
mmcv's stored numbers and a straight band that is a RoIAlign box, gradients against
finite differences."""

import pytest
import torch
from conftest import as_tensor, results_across_thread_counts
from torch.library import opcheck

import roiops
from roiops.bench import random_beziers

# mmcv's tests/test_ops/test_bezier_align.py: output_size 4, spatial_scale 1,
# sampling_ratio 1, aligned=False; a backward from ones
MMCV_INPUT = [[[[1.0, 2, 5, 6], [3, 4, 7, 8], [9, 10, 13, 14], [11, 12, 15, 16]]]]
MMCV_BEZIER = [[0.0, 0, 0, 1, 0, 2, 0, 3, 0, 3, 3, 2, 3, 1, 3, 0, 3]]
MMCV_OUTPUT = [[[[1.0, 1.75, 3.5, 5.25], [2.5, 3.25, 5, 6.75], [6, 6.75, 8.5, 10.25],
                 [9.5, 10.25, 12, 13.75]]]]  # fmt: skip
MMCV_GRAD = [[[[1.5625, 1.5625, 1.5625, 0.3125], [1.5625, 1.5625, 1.5625, 0.3125],
               [1.5625, 1.5625, 1.5625, 0.3125], [0.3125, 0.3125, 0.3125, 0.0625]]]]  # fmt: skip


def case(rng, dtype=torch.float32, k=10, channels=5, size=(2, 5)):
    x = as_tensor(rng.standard_normal((2, channels, 12, 14)), dtype)
    beziers = as_tensor(random_beziers(rng, 2, k, 24, 28), dtype)
    grad = as_tensor(rng.standard_normal((k, channels, *size)), dtype)
    return x, beziers, grad


def run(backend, x, beziers, grad, size, scale, ratio, aligned=True):
    """(output, input gradient) on ``backend``."""
    xb = x.detach().clone().requires_grad_()
    with roiops.use_backend(backend):
        out = roiops.bezier_align(xb, beziers, size, scale, ratio, aligned)
        out.backward(grad)
    return out.detach(), xb.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mmcv_stored_values(dtype):
    x = torch.tensor(MMCV_INPUT, dtype=dtype, requires_grad=True)
    beziers = torch.tensor(MMCV_BEZIER, dtype=dtype)
    out = roiops.mmcv.BezierAlign(4, 1.0, 1, aligned=False)(x, beziers)
    out.backward(torch.ones_like(out))
    assert torch.equal(out, torch.tensor(MMCV_OUTPUT, dtype=dtype))
    assert torch.equal(x.grad, torch.tensor(MMCV_GRAD, dtype=dtype))


def test_a_straight_band_is_roi_align_of_the_box_half_a_bin_back():
    # straight curves with evenly spaced control points: B(u) is linear, bin (ph, pw) is
    # centred at the box's point (pw / PW, ph / PH), so the band is RoIAlign of its box
    # moved back by half a bin (here 3 x 2 cells); every number exact, so every bit
    x = torch.arange(400.0).reshape(1, 1, 20, 20)
    top = [2.0, 4, 6, 4, 10, 4, 14, 4]  # (2, 4) to (14, 4)
    bottom = [14.0, 12, 10, 12, 6, 12, 2, 12]  # (14, 12) back to (2, 12)
    beziers = torch.tensor([[0.0, *top, *bottom]])
    band = roiops.bezier_align(x, beziers, (4, 4), 1.0, 2, True)
    box = roiops.roi_align(x, torch.tensor([[0.0, 0.5, 3, 12.5, 11]]), 4, 1.0, 2, aligned=True)
    assert torch.equal(band, box)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ratio,aligned,size", [(2, True, (2, 5)), (0, True, (3, 4)),
                                                (1, False, (2, 5))])  # fmt: skip
def test_numba_matches_reference_bit_for_bit(rng, dtype, ratio, aligned, size):
    x, beziers, grad = case(rng, dtype, size=size)
    fast = run("numba", x, beziers, grad, size, 0.5, ratio, aligned)
    ref = run("reference", x, beziers, grad, size, 0.5, ratio, aligned)
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])


def test_backward_deterministic_across_thread_counts(rng):
    x, beziers, grad = case(rng, k=40, channels=33)
    runs = results_across_thread_counts(lambda: run("numba", x, beziers, grad, (2, 5), 0.5, 0)[1])
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


def test_gradcheck_and_opcheck(rng):
    x, beziers, _ = case(rng, torch.float64, k=4, channels=2)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: roiops.bezier_align(t, beziers, (2, 3), 0.5, 2), (x,))
    opcheck(torch.ops.roiops.bezier_align.default, (x, beziers, 0.5, 2, 3, 2, True))


def test_lists_half_precision_and_empty(rng):
    x, beziers, _ = case(rng, k=6)
    per_image = [beziers[beziers[:, 0] == i, 1:] for i in range(2)]
    order = torch.cat([torch.nonzero(beziers[:, 0] == i)[:, 0] for i in range(2)])
    expected = roiops.bezier_align(x, beziers, (2, 5), 0.5)[order]
    assert torch.equal(roiops.bezier_align(x, per_image, (2, 5), 0.5), expected)
    half = roiops.bezier_align(x.half(), beziers, (2, 5), 0.5)
    assert half.dtype == torch.float16
    assert torch.equal(half, roiops.bezier_align(x.half().float(), beziers, (2, 5), 0.5).half())
    empty = roiops.bezier_align(x.requires_grad_(), torch.zeros(0, 17), 3)
    empty.sum().backward()
    assert empty.shape == (0, 5, 3, 3) and x.grad.eq(0).all()


def test_bad_arguments():
    x = torch.randn(1, 2, 8, 8)
    good = torch.tensor(MMCV_BEZIER)
    with pytest.raises(ValueError, match=r"beziers as a Tensor must have shape \[K, 17\]"):
        roiops.bezier_align(x, torch.zeros(1, 5), 2)
    with pytest.raises(ValueError, match=r"beziers\[0\] must have shape \[L, 16\]"):
        roiops.bezier_align(x, [torch.zeros(1, 4)], 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        roiops.bezier_align(x, good * float("nan"), 2)
    huge = good.clone()
    huge[0, 7] = 3e6  # p3x: a curve 3 million cells long, adaptive sampling
    with pytest.raises(ValueError, match="sampling points a bin along an axis"):
        roiops.bezier_align(x, huge, 2)
    assert roiops.bezier_align(x, huge, 2, sampling_ratio=1).shape == (1, 2, 2, 2)
    with pytest.raises(TypeError, match="aligned must be a bool"):
        roiops.bezier_align(x, good, 2, aligned=1)
