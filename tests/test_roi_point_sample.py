"""roi_point_sample (PointRend's fine-grained point features): against mmdet's loop over
the images written out (roiops.bench.mmcv_roi_point_sample: mmcv's point_sample),
simple_roi_align as its bins' centres, the Numba kernels against the reference bit for
bit, gradients against finite differences, bad points."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import as_tensor, random_rois, results_across_thread_counts
from torch.library import opcheck

import roiops
from roiops.bench import mmcv_roi_point_sample


def case(rng, dtype=torch.float32, k=12, channels=5, points=7):
    """A map, boxes over and past its edges (sorted by image, as mmdet's), points inside
    and outside their boxes, a gradient."""
    x = as_tensor(rng.standard_normal((2, channels, 9, 11)), dtype)
    rois = random_rois(rng, 2, k, 36, 44, min_size=0.0)
    rois = as_tensor(rois[np.argsort(rois[:, 0], kind="stable")], dtype)
    uv = as_tensor(rng.uniform(-0.3, 1.3, (k, points, 2)), dtype)
    grad = as_tensor(rng.standard_normal((k, channels, points)), dtype)
    return x, rois, uv, grad


def run(backend, x, rois, uv, grad, scale=0.25, aligned=True):
    """(output, input gradient) on ``backend``."""
    xb = x.detach().clone().requires_grad_()
    with roiops.use_backend(backend):
        out = roiops.roi_point_sample(xb, rois, uv, scale, aligned)
        out.backward(grad)
    return out.detach(), xb.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_reference_is_mmdet_s(rng, dtype, tol):
    x, rois, uv, grad = case(rng, dtype, k=30)
    ours = run("reference", x, rois, uv, grad)
    leaf = x.clone().requires_grad_()
    theirs = mmcv_roi_point_sample(leaf, rois, uv, 0.25)
    theirs.backward(grad)
    torch.testing.assert_close(ours[0], theirs.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(ours[1], leaf.grad, rtol=tol, atol=tol)
    assert ours[0].ne(0).any() and ours[0].eq(0).any()  # (points past the edges too)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
def test_numba_matches_reference_bit_for_bit(rng, dtype, aligned):
    x, rois, uv, grad = case(rng, dtype)
    fast = run("numba", x, rois, uv, grad, aligned=aligned)
    ref = run("reference", x, rois, uv, grad, aligned=aligned)
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])


def test_shared_points_and_simple_roi_align(rng):
    # one set of points for every RoI is that set repeated; at the bins' centres it is
    # simple_roi_align, bit for bit
    x, rois, uv, _ = case(rng, torch.float64)
    shared = uv[:1]
    repeated = roiops.roi_point_sample(x, rois, shared.expand(12, -1, -1), 0.25)
    assert torch.equal(roiops.roi_point_sample(x, rois, shared, 0.25), repeated)
    centres = roiops.functional.bin_centres((3, 4), rois)
    assert torch.equal(centres[0, :5], torch.tensor(
        [[0.125, 1 / 6], [0.375, 1 / 6], [0.625, 1 / 6], [0.875, 1 / 6], [0.125, 0.5]],
        dtype=torch.float64))  # fmt: skip
    for aligned in (True, False):
        points = roiops.roi_point_sample(x, rois, centres, 0.25, aligned)
        simple = roiops.simple_roi_align(x, rois, (3, 4), 0.25, aligned)
        assert torch.equal(points.view(12, 5, 3, 4), simple)


def test_backward_deterministic_across_thread_counts(rng):
    x, rois, uv, _ = case(rng, k=60, channels=33)
    grad = as_tensor(rng.standard_normal((60, 33, 7)), torch.float32)
    runs = results_across_thread_counts(lambda: run("numba", x, rois, uv, grad)[1])
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


def test_gradcheck_and_opcheck(rng):
    x, rois, uv, _ = case(rng, torch.float64, k=5, channels=2, points=4)
    x.requires_grad_()
    for aligned in (True, False):
        assert torch.autograd.gradcheck(
            lambda t, a=aligned: roiops.roi_point_sample(t, rois, uv, 0.25, a), (x,)
        )
    opcheck(torch.ops.roiops.roi_point_sample.default, (x, rois, uv, 0.25, True))
    opcheck(torch.ops.roiops.roi_point_sample.default, (x, rois, uv[:1], 0.25, False))


def test_lists_half_precision_empty_and_no_gradient_to_points(rng):
    x, rois, uv, _ = case(rng, k=6)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    assert torch.equal(roiops.roi_point_sample(x, per_image, uv, 0.25),
                       roiops.roi_point_sample(x, rois, uv, 0.25))  # fmt: skip
    half = roiops.roi_point_sample(x.half(), rois, uv, 0.25)
    assert half.dtype == torch.float16
    assert torch.equal(half, roiops.roi_point_sample(x.half().float(), rois, uv, 0.25).half())
    leaf, points = x.clone().requires_grad_(), uv.clone().requires_grad_()
    roiops.roi_point_sample(leaf, rois, points, 0.25).sum().backward()
    assert leaf.grad.abs().sum() > 0 and points.grad is None
    assert roiops.roi_point_sample(x, rois, uv[:, :0], 0.25).shape == (6, 5, 0)
    assert roiops.roi_point_sample(x, rois[:0], uv[:1], 0.25).shape == (0, 5, 7)


def test_bad_points():
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0, 1.0, 1, 5, 5], [0, 2, 2, 6, 7]])
    with pytest.raises(TypeError, match="points must be a Tensor"):
        roiops.roi_point_sample(x, rois, [[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"points must have shape \[K, P, 2\].*K = 2 RoIs"):
        roiops.roi_point_sample(x, rois, torch.rand(3, 4, 2))
    with pytest.raises(ValueError, match=r"points must have shape \[K, P, 2\]"):
        roiops.roi_point_sample(x, rois, torch.rand(2, 4))
    with pytest.raises(TypeError, match="points must be a floating point tensor"):
        roiops.roi_point_sample(x, rois, torch.ones(2, 4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="points is on meta but input is on cpu"):
        roiops.roi_point_sample(x, rois, torch.rand(2, 4, 2, device="meta"))
    with pytest.raises(ValueError, match="NaN or infinite"):
        roiops.roi_point_sample(x, rois * float("nan"), torch.rand(2, 4, 2))


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_points_that_are_not_finite_read_zero(rng, backend):
    # as a point past the map: no neighbour, 0, no gradient; the other points as usual
    x, rois, uv, grad = case(rng, torch.float64, k=4, points=3)
    odd = uv.clone()
    odd[0, 0, 0], odd[1, 1, 1], odd[2, 2, 0] = float("nan"), float("inf"), -3e300
    out, gx = run(backend, x, rois, odd, grad)
    assert out[0, :, 0].eq(0).all() and out[1, :, 1].eq(0).all() and out[2, :, 2].eq(0).all()
    keep = torch.ones(4, 3, dtype=torch.bool)
    keep[0, 0] = keep[1, 1] = keep[2, 2] = False
    grad_kept = grad * keep[:, None, :]
    expected = run(backend, x, rois, uv, grad_kept)
    assert torch.equal(out.permute(0, 2, 1)[keep], expected[0].permute(0, 2, 1)[keep])
    assert torch.equal(gx, expected[1])


class Boxes:
    """detectron2's ``Boxes`` as far as the function reads it: ``.tensor[L, 4]``."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __len__(self):
        return self.tensor.shape[0]


def detectron2_fine_grained_features(features_list, feature_scales, boxes, point_coords):
    """detectron2's PointRend ``point_sample_fine_grained_features`` written out (its
    ``get_point_coords_wrt_image``, and ``point_sample``: grid_sample image by image and map
    by map)."""
    cat_boxes = torch.cat([b.tensor for b in boxes])
    with torch.no_grad():
        wrt_image = point_coords.clone()
        wrt_image[:, :, 0] = wrt_image[:, :, 0] * (cat_boxes[:, None, 2] - cat_boxes[:, None, 0])
        wrt_image[:, :, 1] = wrt_image[:, :, 1] * (cat_boxes[:, None, 3] - cat_boxes[:, None, 1])
        wrt_image[:, :, 0] += cat_boxes[:, None, 0]
        wrt_image[:, :, 1] += cat_boxes[:, None, 1]
    point_features = []
    for idx_img, coords in enumerate(torch.split(wrt_image, [len(b) for b in boxes])):
        per_image = []
        for feature_map, feature_scale in zip(features_list, feature_scales, strict=True):
            h, w = feature_map.shape[-2:]
            scale = torch.tensor([w, h], dtype=coords.dtype) / feature_scale
            grid = 2.0 * (coords / scale).unsqueeze(0) - 1.0
            sampled = F.grid_sample(feature_map[idx_img].unsqueeze(0), grid, align_corners=False)
            per_image.append(sampled.squeeze(0).transpose(1, 0))
        point_features.append(torch.cat(per_image, dim=1))
    return torch.cat(point_features, dim=0), wrt_image


def test_detectron2_fine_grained_features(rng):
    # detectron2's PointRend point head input: two maps (strides 4 and 8), Boxes per image
    maps = [as_tensor(rng.standard_normal((2, 3, 16 >> i, 20 >> i)), torch.float64)
            for i in range(2)]  # fmt: skip
    rois = random_rois(rng, 1, 9, 64, 80, min_size=0.0)
    boxes = [Boxes(as_tensor(rois[:5, 1:], torch.float64)),
             Boxes(as_tensor(rois[5:, 1:], torch.float64))]  # fmt: skip
    coords = as_tensor(rng.uniform(0, 1, (9, 6, 2)), torch.float64)
    leaves = [m.clone().requires_grad_() for m in maps]
    ours, wrt_image = roiops.nn.point_sample_fine_grained_features(leaves, [1 / 4, 1 / 8], boxes,
                                                                   coords)  # fmt: skip
    theirs, their_wrt = detectron2_fine_grained_features(maps, [1 / 4, 1 / 8], boxes, coords)
    assert ours.shape == (9, 6, 6) and torch.equal(wrt_image, their_wrt)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    grad = as_tensor(rng.standard_normal(ours.shape), torch.float64)
    ours.backward(grad)
    grad_maps = torch.autograd.grad(
        detectron2_fine_grained_features([m.requires_grad_() for m in maps], [1 / 4, 1 / 8],
                                         boxes, coords)[0], maps, grad)  # fmt: skip
    for leaf, expected in zip(leaves, grad_maps, strict=True):
        torch.testing.assert_close(leaf.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("shared", [False, True])
def test_onnx_form_is_roi_align_on_a_zero_ring(rng, aligned, shared):
    # what the export writes (every point a box of no size, one-point RoIAlign bins on the
    # map with a ring of zeros), run eagerly: the same numbers up to rounding
    from roiops.functional import roi_point_sample_as_roi_align

    x, rois, uv, _ = case(rng, torch.float64, k=20)
    uv = uv[:1] if shared else uv
    expected = roiops.roi_point_sample(x, rois, uv, 0.25, aligned)
    got = roi_point_sample_as_roi_align(x, rois, uv, 0.25, aligned)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
