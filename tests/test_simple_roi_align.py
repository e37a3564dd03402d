"""SimpleRoIAlign (PointRend; roi_point_sample at the bins' centres): the reference
against mmcv's forward written out (its points through grid_sample), pencil cases at the
map's edge, the Numba kernels against the reference bit for bit, gradients against finite
differences."""

import numpy as np
import pytest
import torch
from conftest import as_tensor, random_rois, results_across_thread_counts
from torch.library import opcheck

import roiops
from roiops.bench import mmcv_simple_roi_align


def case(rng, dtype=torch.float32, k=12, channels=5, size=(4, 3)):
    """A map, boxes over and past its edges (sorted by image, as mmdet's), a gradient."""
    x = as_tensor(rng.standard_normal((2, channels, 9, 11)), dtype)
    rois = random_rois(rng, 2, k, 36, 44, min_size=0.0)
    rois = as_tensor(rois[np.argsort(rois[:, 0], kind="stable")], dtype)
    grad = as_tensor(rng.standard_normal((k, channels, *size)), dtype)
    return x, rois, grad


def run(backend, x, rois, grad, size, scale, aligned=True):
    """(output, input gradient) on ``backend``."""
    xb = x.detach().clone().requires_grad_()
    with roiops.use_backend(backend):
        out = roiops.simple_roi_align(xb, rois, size, scale, aligned)
        out.backward(grad)
    return out.detach(), xb.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("aligned", [True, False])
def test_reference_is_mmcv_s(rng, dtype, tol, aligned):
    # mmcv's points go through coordinates normalised by the map's size and back: the same
    # numbers up to rounding, forward and input gradient
    x, rois, grad = case(rng, dtype, k=30)
    ours = run("reference", x, rois, grad, (4, 3), 0.25, aligned)
    leaf = x.clone().requires_grad_()
    theirs = mmcv_simple_roi_align(leaf, rois, (4, 3), 0.25, aligned)
    theirs.backward(grad)
    torch.testing.assert_close(ours[0], theirs.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(ours[1], leaf.grad, rtol=tol, atol=tol)
    assert ours[0].abs().sum() > 0 and ours[0].eq(0).any()  # (boxes past the edges too)


def test_pencil_cases_at_the_edge():
    # a 5 x 5 arange map, one bin a box: aligned, a box of one cell samples that cell's
    # centre, its value; half a cell past the corner, a quarter of the corner cell (the
    # other three neighbours are padding); a cell further, nothing
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    boxes = torch.tensor([[0, 2.0, 1, 3, 2], [0, -0.5, -0.5, 0.5, 0.5], [0, 4.5, 4.5, 5.5, 5.5],
                          [0, -1.5, 0, -0.5, 1], [0, 0, 0, 5, 5]])  # fmt: skip
    out = roiops.simple_roi_align(x, boxes, 1, 1.0)
    assert out.flatten().tolist() == [7.0, 0.0, 24 / 4, 0.0, 12.0]
    # RoIAlign moves a point near the edge onto it: the corner cell in full
    assert roiops.roi_align(x, boxes[1:2], 1, 1.0, 1, True).item() == 0.0
    # a 5 x 5 grid over the whole map samples every cell's centre: the map itself
    assert torch.equal(roiops.simple_roi_align(x, boxes[4:], 5, 1.0)[0], x[0])
    # aligned=False (mmcv's legacy): x * (W - 1) / W, the grid's corners on the corner cells
    legacy = roiops.simple_roi_align(x, torch.tensor([[0, 0.0, 0, 5, 5]]), 2, 1.0, False)
    # points 1.25 and 3.75 image cells, at 1.0 and 3.0 on the map
    assert legacy.flatten().tolist() == [6.0, 8.0, 16.0, 18.0]


def test_inside_the_map_it_is_roi_align_with_one_point(rng):
    # away from the edges the zero padding never shows: RoIAlign (aligned, one point a
    # bin) up to the rounding of the points' arithmetic
    x = as_tensor(rng.standard_normal((2, 4, 20, 24)), torch.float64)
    xy = rng.uniform(8, 40, (10, 2))
    rois = as_tensor(np.c_[rng.integers(0, 2, 10), xy, xy + rng.uniform(4, 40, (10, 2))],
                     torch.float64)  # fmt: skip
    torch.testing.assert_close(roiops.simple_roi_align(x, rois, 7, 0.25),
                               roiops.roi_align(x, rois, 7, 0.25, 1, True), rtol=1e-12,
                               atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
def test_numba_matches_reference_bit_for_bit(rng, dtype, aligned):
    x, rois, grad = case(rng, dtype)
    fast = run("numba", x, rois, grad, (4, 3), 0.25, aligned)
    ref = run("reference", x, rois, grad, (4, 3), 0.25, aligned)
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])


def test_backward_deterministic_across_thread_counts(rng):
    x, rois, _ = case(rng, k=60, channels=33)
    grad = as_tensor(rng.standard_normal((60, 33, 4, 3)), torch.float32)
    runs = results_across_thread_counts(lambda: run("numba", x, rois, grad, (4, 3), 0.25)[1])
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


def test_gradcheck_and_opcheck(rng):
    x, rois, _ = case(rng, torch.float64, k=5, channels=2)
    x.requires_grad_()
    for aligned in (True, False):
        assert torch.autograd.gradcheck(
            lambda t, a=aligned: roiops.simple_roi_align(t, rois, (2, 3), 0.25, a), (x,)
        )
    points = roiops.functional.bin_centres((2, 3), rois)
    opcheck(torch.ops.roiops.roi_point_sample.default, (x, rois, points, 0.25, True))


def test_layer_lists_half_precision_and_empty(rng):
    x, rois, _ = case(rng, k=6)
    layer = roiops.SimpleRoIAlign((4, 3), 0.25)
    assert repr(layer) == "SimpleRoIAlign(output_size=(4, 3), spatial_scale=0.25, aligned=True)"
    assert torch.equal(layer(x, rois), roiops.simple_roi_align(x, rois, (4, 3), 0.25))
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    assert torch.equal(roiops.simple_roi_align(x, per_image, (4, 3), 0.25), layer(x, rois))
    half = roiops.simple_roi_align(x.half(), rois, (4, 3), 0.25)
    assert half.dtype == torch.float16
    assert torch.equal(half, roiops.simple_roi_align(x.half().float(), rois, (4, 3), 0.25).half())
    empty = roiops.simple_roi_align(x.requires_grad_(), torch.zeros(0, 5), 3)
    empty.sum().backward()
    assert empty.shape == (0, 5, 3, 3) and x.grad.eq(0).all()
    assert roiops.simple_roi_align(x[:, :, :0], rois, 3).eq(0).all()


def test_rows_are_in_roi_order(rng):
    # mmcv orders its rows image by image (the same where the boxes are sorted by image,
    # as mmdet's bbox2roi sorts them); roiops keeps the RoIs' order, as every RoI op
    x, rois, _ = case(rng, torch.float64, k=10)
    shuffled = rois[torch.from_numpy(rng.permutation(10))]
    order = torch.argsort(shuffled[:, 0], stable=True)
    ours = roiops.simple_roi_align(x, shuffled, (4, 3), 0.25)
    theirs = mmcv_simple_roi_align(x, shuffled, (4, 3), 0.25, True)
    torch.testing.assert_close(ours[order], theirs, rtol=1e-12, atol=1e-12)


def test_bad_arguments():
    x = torch.randn(1, 2, 8, 8)
    good = torch.tensor([[0, 1.0, 1, 5, 5]])
    with pytest.raises(ValueError, match=r"boxes as a Tensor must have shape \[K, 5\]"):
        roiops.simple_roi_align(x, torch.zeros(1, 4), 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        roiops.simple_roi_align(x, good * float("nan"), 2)
    with pytest.raises(ValueError, match=r"batch indices must lie in \[0, 1\)"):
        roiops.simple_roi_align(x, good + torch.tensor([1.0, 0, 0, 0, 0]), 2)
    with pytest.raises(TypeError, match="aligned must be a bool"):
        roiops.simple_roi_align(x, good, 2, aligned=1)
    with pytest.raises(ValueError, match="output_size"):
        roiops.simple_roi_align(x, good, 0)


@pytest.mark.parametrize("aligned", [True, False])
def test_onnx_form_is_roi_align_on_a_zero_ring(rng, aligned):
    # what the export writes (Pad, then one-point RoIAlign bins on boxes moved a cell),
    # run eagerly: the same numbers up to rounding, at the edges and past them too
    from roiops.functional import simple_roi_align_as_roi_align

    x, rois, _ = case(rng, torch.float64, k=40)
    rois[::3, 3:] = rois[::3, 1:3] - 2  # (inverted boxes)
    expected = roiops.simple_roi_align(x, rois, (4, 3), 0.25, aligned)
    got = simple_roi_align_as_roi_align(x, rois, (4, 3), 0.25, aligned)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
