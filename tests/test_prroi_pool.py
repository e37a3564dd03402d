"""prroi_pool: against numerical integration, gradcheck (input and boxes), backends vs
the reference, bad input."""

import math

import numpy as np
import pytest
import torch
from conftest import as_tensor, random_rois, results_across_thread_counts

import roiops


def zero_padded_interpolant(plane, y, x):
    height, width = plane.shape
    total = 0.0
    for h in (np.floor(y), np.floor(y) + 1):
        for w in (np.floor(x), np.floor(x) + 1):
            if 0 <= h < height and 0 <= w < width:
                total += plane[int(h), int(w)] * (1 - abs(y - h)) * (1 - abs(x - w))
    return total


def box_lists(dtype=torch.float64):
    b0 = torch.tensor([[1.3, 0.7, 9.9, 11.2], [-2.1, 3.3, 4.4, 15.8], [6.3, 2.2, 6.8, 2.9]])
    b1 = torch.tensor([[5.1, 6.2, 9.9, 12.8], [14.0, 13.0, 20.0, 19.0]])
    return [b0.to(dtype), b1.to(dtype)]


def test_matches_numerical_integration(rng):
    # midpoint rule on a fine grid over each bin: converges to the exact integral
    x = rng.standard_normal((2, 2, 7, 8))
    boxes = box_lists()
    out = roiops.prroi_pool(torch.from_numpy(x), boxes, (2, 3), 0.5).numpy()
    m = 200
    k = 0
    for n, b in enumerate(boxes):
        for x1, y1, x2, y2 in b.numpy() * 0.5:
            bin_h, bin_w = max(y2 - y1, 0) / 2, max(x2 - x1, 0) / 3
            for ph in range(2):
                for pw in range(3):
                    ys = y1 + bin_h * ph + (np.arange(m) + 0.5) / m * bin_h
                    xs = x1 + bin_w * pw + (np.arange(m) + 0.5) / m * bin_w
                    for c in range(2):
                        expected = np.mean(
                            [[zero_padded_interpolant(x[n, c], yy, xx) for xx in xs] for yy in ys]
                        )
                        assert out[k, c, ph, pw] == pytest.approx(expected, abs=5e-5)
            k += 1


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_gradcheck_input_and_boxes(backend):
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_()
    boxes = tuple(b.requires_grad_() for b in box_lists())
    with roiops.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda t, *bs: roiops.prroi_pool(t, list(bs), (2, 3), 0.5), (x, *boxes)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_equals_reference(rng, dtype):
    x = as_tensor(rng.standard_normal((2, 5, 9, 11)), dtype)
    rois = as_tensor(random_rois(rng, 2, 12, 18, 22), dtype).requires_grad_()
    grad = as_tensor(rng.standard_normal((12, 5, 3, 2)), dtype)
    results = []
    for backend in ("numba", "reference"):
        xb = x.clone().requires_grad_()
        rb = rois.detach().clone().requires_grad_()
        with roiops.use_backend(backend):
            out = roiops.prroi_pool(xb, rb, (3, 2), 0.5)
            out.backward(grad)
        results.append((out.detach(), xb.grad, rb.grad))
    (out, gx, gb), (ref_out, ref_gx, ref_gb) = results
    assert torch.equal(out, ref_out)
    assert torch.equal(gx, ref_gx)
    torch.testing.assert_close(gb, ref_gb)  # per-RoI sums in another order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_only_the_cells_that_can_add_are_visited(rng, monkeypatch, dtype):
    # a bin's integral visits the cells from -1 to H - 1 (W - 1) that it meets: beyond,
    # all four corners are zero padding. Boxes reaching 30 cells past the map give the
    # bits of a visit of every cell they span (the reference with the loops uncut), on
    # both backends; one 1e12 px wide finishes (it visited ~1e24 cells)
    from roiops.reference import prroi_pool as reference

    x = as_tensor(rng.standard_normal((2, 3, 9, 11)), dtype)
    wide = as_tensor([[0, -60, -50, 80, 70], [1, -70, 3, -10, 9], [1, 2.5, -61, 13.5, 100]],
                     dtype)  # fmt: skip
    huge = as_tensor([[0, -1e12, -1e12, 1e12, 1e12], [1, 3, 4, 1e12, 9]], dtype)
    grad = as_tensor(rng.standard_normal((3, 3, 3, 2)), dtype)

    def run(backend, rois):
        xb, rb = x.clone().requires_grad_(), rois.clone().requires_grad_()
        with roiops.use_backend(backend):
            out = roiops.prroi_pool(xb, rb, (3, 2), 0.5)
            out.backward(grad[: len(rois)])
        return out.detach(), xb.grad, rb.grad

    cut = run("reference", wide)
    assert torch.equal(cut[0], run("numba", wide)[0])
    with monkeypatch.context() as m:
        m.setattr(reference, "cell_range", lambda lo, hi, size: (math.floor(lo), math.ceil(hi)))
        uncut = run("reference", wide)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    for a, b in zip(cut, uncut, strict=True):
        assert torch.equal(a.view(bits), b.view(bits))
    far = run("numba", huge)
    assert all(torch.isfinite(t).all() for t in far)
    for a, b in zip(far[:2], run("reference", huge)[:2], strict=True):
        assert torch.equal(a, b)


def test_backward_deterministic_and_opcheck(rng):
    x = as_tensor(rng.standard_normal((2, 40, 12, 12)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 30, 24, 24, min_size=4), torch.float32)
    grad = as_tensor(rng.standard_normal((30, 40, 2, 2)), torch.float32)

    def input_grad():
        xb = x.clone().requires_grad_()
        roiops.prroi_pool(xb, rois, 2, 0.5).backward(grad)
        return xb.grad

    runs = results_across_thread_counts(input_grad)
    assert all(torch.equal(r, runs[0]) for r in runs)
    args = (x.double().requires_grad_(), rois.double(), 0.5, 2, 2)
    torch.library.opcheck(torch.ops.roiops.prroi_pool, args)


def test_zero_area_bins_and_module():
    x = torch.randn(1, 2, 6, 6)
    out = roiops.prroi_pool(x, torch.tensor([[0, 3.0, 3, 3, 5], [0, 4.0, 4, 1, 1]]), 2)
    assert torch.equal(out, torch.zeros_like(out))
    layer = roiops.PrRoIPool2D(2, 3, 0.5)
    rois = torch.tensor([[0, 1.0, 1, 9, 7]])
    assert torch.equal(layer(x, rois), roiops.prroi_pool(x, rois, (2, 3), 0.5))
    with pytest.raises(ValueError, match="batch indices must lie"):
        roiops.prroi_pool(x, torch.tensor([[1, 1.0, 1, 9, 7]]), 2)


# mmcv's own expected values (tests/test_ops/test_prroi_pool.py of open-mmlab/mmcv,
# printed there in float32: 2x2 bins, scale 1): input, box, output, input gradient and
# box gradient for an all-ones output gradient. No other library gives box gradients.
_C = [[1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0], [9.0, 10.0, 13.0, 14.0], [11.0, 12.0, 15.0, 16.0]]
_NINTHS = [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]
MMCV_CASES = [
    ([[[1.0, 2.0], [3.0, 4.0]]], [0, 0, 0, 1, 1], [[[1.75, 2.25], [2.75, 3.25]]],
     [[[1.0, 1.0], [1.0, 1.0]]], [0, 2, 4, 2, 4]),
    ([[[1.0, 2.0], [3.0, 4.0]], [[4.0, 3.0], [2.0, 1.0]]], [0, 0, 0, 1, 1],
     [[[1.75, 2.25], [2.75, 3.25]], [[3.25, 2.75], [2.25, 1.75]]],
     [[[1.0, 1.0], [1.0, 1.0]]] * 2, [0, 0, 0, 0, 0]),
    ([_C], [0, 0, 0, 3, 3], [[[3.75, 6.91666651], [10.08333302, 13.25]]],
     [[[v / 9 for v in row] for row in _NINTHS]], [0, 3.33333302, 6.66666603, 3.33333349,
                                                   6.66666698]),
]  # fmt: skip


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(MMCV_CASES)))
def test_matches_mmcv_expected_values(backend, dtype, case):
    planes, box, expected, expected_grad, expected_box_grad = MMCV_CASES[case]
    x = torch.tensor([planes], dtype=dtype, requires_grad=True)
    rois = torch.tensor([box], dtype=dtype, requires_grad=True)
    with roiops.use_backend(backend):
        out = roiops.prroi_pool(x, rois, 2, 1.0)
        out.backward(torch.ones_like(out))
    close = dict(rtol=1e-6, atol=1e-6)  # mmcv's values are float32 results
    torch.testing.assert_close(out.detach(), torch.tensor([expected], dtype=dtype), **close)
    torch.testing.assert_close(x.grad, torch.tensor([expected_grad], dtype=dtype), **close)
    torch.testing.assert_close(rois.grad, torch.tensor([expected_box_grad], dtype=dtype),
                               **close)  # fmt: skip
