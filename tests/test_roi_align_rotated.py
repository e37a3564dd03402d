"""roi_align_rotated: backends vs the reference, hand-checkable rotations, roi_align at
angle 0, conventions (degrees / radians, clockwise, aligned), bad input."""

import numpy as np
import pytest
import torch
from conftest import as_tensor, results_across_thread_counts

import roiops

DTYPES = [torch.float32, torch.float64]


def rotated_rois(rng, batch_size, count, image_h, image_w, degrees=True):
    """[K, 6] rotated boxes (batch, cx, cy, w, h, angle) around and beyond an image."""
    cx = rng.uniform(-0.2 * image_w, 1.2 * image_w, count)
    cy = rng.uniform(-0.2 * image_h, 1.2 * image_h, count)
    w = rng.uniform(0.0, image_w, count)
    h = rng.uniform(0.0, image_h, count)
    angle = rng.uniform(-180, 180, count) if degrees else rng.uniform(-np.pi, np.pi, count)
    batch = rng.integers(0, batch_size, count)
    return np.stack([batch, cx, cy, w, h, angle], axis=1)


def run(backend, x, rois, output_size, scale, ratio, grad=None, **kw):
    x = x.detach().clone().requires_grad_(grad is not None)
    with roiops.use_backend(backend):
        out = roiops.roi_align_rotated(x, rois, output_size, scale, ratio, **kw)
        if grad is None:
            return out.detach(), None
        out.backward(grad)
    return out.detach(), x.grad


def test_angle_zero_is_aligned_roi_align(rng):
    x = as_tensor(rng.standard_normal((2, 4, 12, 14)), torch.float64)
    cx, cy = rng.uniform(0, 28, 10), rng.uniform(0, 24, 10)
    w, h = rng.uniform(1, 20, 10), rng.uniform(1, 20, 10)
    batch = rng.integers(0, 2, 10)
    rotated = as_tensor(np.stack([batch, cx, cy, w, h, np.zeros(10)], 1), torch.float64)
    corners = np.stack([batch, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    for ratio in (0, 2):
        out = roiops.roi_align_rotated(x, rotated, (3, 4), 0.5, ratio)
        expected = roiops.roi_align(x, as_tensor(corners, torch.float64), (3, 4), 0.5, ratio, True)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_quarter_turns_rotate_the_output():
    # a square box: at 90 degrees counter-clockwise, output[i, j] = output_0[n - 1 - j, i]
    # (np.rot90(., -1)); at 180, the output flipped both ways
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    box = [0, 8.0, 7.0, 8.0, 8.0]
    out = {
        a: roiops.roi_align_rotated(x, torch.tensor([box + [a]], dtype=torch.float64), 4)[0, 0]
        for a in (0.0, 90.0, 180.0, -90.0)
    }
    base = out[0.0]
    close = dict(rtol=0, atol=1e-12)
    torch.testing.assert_close(out[90.0], torch.rot90(base, -1), **close)
    torch.testing.assert_close(out[180.0], torch.flip(base, (0, 1)), **close)
    torch.testing.assert_close(out[-90.0], torch.rot90(base, 1), **close)


def test_conventions_agree():
    # mmcv: radians, clockwise flag; detectron2: degrees counter-clockwise
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    deg = torch.tensor([[0, 5.0, 5.0, 6.0, 4.0, 30.0]], dtype=torch.float64)
    rad = deg.clone()
    rad[0, 5] = -np.pi / 6  # 30 degrees counter-clockwise = -30 degrees clockwise
    a = roiops.roi_align_rotated(x, deg, 2, 1.0, 2)
    b = roiops.roi_align_rotated(x, rad, 2, 1.0, 2, angle_unit="radians", clockwise=True)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "ratio,scale,output_size,kw",
    [
        (0, 0.5, (3, 4), {}),
        (2, 0.25, 2, {}),
        (1, 1.0, 3, {"aligned": False, "angle_unit": "radians", "clockwise": True}),
        (-1, 0.5, (2, 5), {"angle_unit": "radians"}),
    ],
)
def test_numba_equals_reference_bitwise(rng, dtype, ratio, scale, output_size, kw):
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = as_tensor(rng.standard_normal((2, 7, 9, 11)), dtype)
    rois = rotated_rois(rng, 2, 10, 9 / scale, 11 / scale, kw.get("angle_unit") != "radians")
    rois = as_tensor(rois, dtype)
    grad = as_tensor(rng.standard_normal((10, 7, oh, ow)), dtype)
    fast = run("numba", x, rois, output_size, scale, ratio, grad, **kw)
    ref = run("reference", x, rois, output_size, scale, ratio, grad, **kw)
    assert torch.equal(fast[0], ref[0])
    assert torch.equal(fast[1], ref[1])


def test_backward_deterministic_across_thread_counts(rng):
    x = as_tensor(rng.standard_normal((2, 40, 12, 12)), torch.float32)
    rois = as_tensor(rotated_rois(rng, 2, 50, 24, 24), torch.float32)
    grad = as_tensor(rng.standard_normal((50, 40, 3, 3)), torch.float32)
    runs = results_across_thread_counts(lambda: run("numba", x, rois, 3, 0.5, 2, grad)[1])
    assert all(torch.equal(r, runs[0]) for r in runs)


def test_gradcheck_and_opcheck(rng):
    x = as_tensor(rng.standard_normal((2, 3, 6, 7)), torch.float64).requires_grad_()
    rois = as_tensor(rotated_rois(rng, 2, 5, 12, 14), torch.float64)
    assert torch.autograd.gradcheck(lambda t: roiops.roi_align_rotated(t, rois, 2, 0.5, 2), (x,))
    args = (x, rois, 0.5, 2, 2, 2, True, True, False)
    torch.library.opcheck(torch.ops.roiops.roi_align_rotated, args)


def test_bad_input():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match=r"shape \[K, 6\] \(batch_index, cx, cy, w, h, angle\)"):
        roiops.roi_align_rotated(x, torch.zeros(1, 5), 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        roiops.roi_align_rotated(x, torch.tensor([[0, 3.0, 3, 2, 2, float("inf")]]), 2)
    with pytest.raises(ValueError, match="negative width or height"):
        roiops.roi_align_rotated(x, torch.tensor([[0, 3.0, 3, -2, 2, 0]]), 2)
    with pytest.raises(ValueError, match="angle_unit must be"):
        roiops.roi_align_rotated(x, torch.tensor([[0, 3.0, 3, 2, 2, 0]]), 2, angle_unit="turns")
    # mmcv's legacy mode forces small and negative sizes to one cell instead
    out = roiops.roi_align_rotated(x, torch.tensor([[0, 3.0, 3, -2, 2, 0]]), 2, aligned=False)
    assert torch.isfinite(out).all()
    boxes = [torch.tensor([[3.0, 3, 2, 2, 10]])]
    rois = torch.tensor([[0, 3.0, 3, 2, 2, 10]])
    assert torch.equal(roiops.roi_align_rotated(x, boxes, 2), roiops.roi_align_rotated(x, rois, 2))
    assert roiops.roi_align_rotated(x, torch.zeros(0, 6), 2).shape == (0, 2, 2, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(rng, dtype):
    x = as_tensor(rng.standard_normal((1, 4, 8, 8)), dtype).requires_grad_()
    rois = as_tensor(rotated_rois(rng, 1, 4, 16, 16), torch.float32)
    out = roiops.roi_align_rotated(x, rois, 2, 0.5, 2)
    assert out.dtype == dtype
    assert torch.equal(out, roiops.roi_align_rotated(x.detach().float(), rois, 2, 0.5, 2).to(dtype))
    out.sum().backward()
    assert x.grad.dtype == dtype


def test_module():
    layer = roiops.RoIAlignRotated(2, 0.5, 2)
    x = torch.randn(1, 3, 8, 8)
    rois = torch.tensor([[0, 6.0, 6, 4, 3, 20]])
    assert torch.equal(layer(x, rois), roiops.roi_align_rotated(x, rois, 2, 0.5, 2))
    assert "RoIAlignRotated(output_size=2, spatial_scale=0.5, sampling_ratio=2" in repr(layer)


# mmcv's own expected values (tests/test_ops/test_roi_align_rotated.py of open-mmlab/mmcv:
# radians, counter-clockwise, aligned, 2x2 bins, sampling_ratio 2, scale 1): input,
# box, output, input gradient for an all-ones output gradient
_A = [[1.0, 2.0], [3.0, 4.0]]
_B = [[1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0], [9.0, 10.0, 13.0, 14.0], [11.0, 12.0, 15.0, 16.0]]
_GRAD_A = [[3.0625, 0.4375], [0.4375, 0.0625]]
_GRAD_B = [
    [0.47265625, 0.4296875, 0.4296875, 0.04296875],
    [0.4296875, 0.390625, 0.390625, 0.0390625],
    [0.4296875, 0.390625, 0.390625, 0.0390625],
    [0.04296875, 0.0390625, 0.0390625, 0.00390625],
]
MMCV_CASES = [
    ([_A], [0, 0.5, 0.5, 1, 1, 0], [[[1.0, 1.25], [1.5, 1.75]]], [_GRAD_A]),
    ([_A], [0, 0.5, 0.5, 1, 1, np.pi / 2], [[[1.5, 1.0], [1.75, 1.25]]], [_GRAD_A]),
    (
        [_A, [[4.0, 3.0], [2.0, 1.0]]],
        [0, 0.5, 0.5, 1, 1, 0],
        [[[1.0, 1.25], [1.5, 1.75]], [[4.0, 3.75], [3.5, 3.25]]],
        [_GRAD_A, _GRAD_A],
    ),
    ([_B], [0, 1.5, 1.5, 3, 3, 0], [[[1.9375, 4.75], [7.5625, 10.375]]], [_GRAD_B]),
    ([_B], [0, 1.5, 1.5, 3, 3, np.pi / 2], [[[7.5625, 1.9375], [10.375, 4.75]]], [_GRAD_B]),
]


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(MMCV_CASES)))
def test_matches_mmcv_expected_values(backend, dtype, case):
    planes, box, expected, expected_grad = MMCV_CASES[case]
    x = torch.tensor([planes], dtype=dtype)
    rois = torch.tensor([box], dtype=dtype)
    grad = torch.ones(1, len(planes), 2, 2, dtype=dtype)
    out, gx = run(backend, x, rois, 2, 1.0, 2, grad, angle_unit="radians")
    close = dict(rtol=1e-6, atol=1e-6)  # cos(pi / 2) is not exactly 0
    torch.testing.assert_close(out, torch.tensor([expected], dtype=dtype), **close)
    torch.testing.assert_close(gx, torch.tensor([expected_grad], dtype=dtype), **close)


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("quarter_turns", range(4))
def test_matches_detectron2_expected_values(backend, quarter_turns):
    # detectron2's own case (tests/layers/test_roi_align_rotated.py of
    # facebookresearch/detectron2): a 5x5 arange image, box [1, 3] x [1, 3] as
    # (cx, cy, w, h) = (2, 2, 2, 2), 4x4 bins, adaptive sampling, degrees; bin (0, 0)'s
    # centre (1.25, 1.25) interpolates cells 0, 1, 5, 6: 4.5. Turning the box 90 degrees
    # counter-clockwise turns the output 90 degrees clockwise.
    x = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    box = torch.tensor([[0, 2.0, 2.0, 2.0, 2.0, 90.0 * quarter_turns]])
    with roiops.use_backend(backend):
        out = roiops.roi_align_rotated(x, box, 4, 1.0, 0)[0, 0]
    upright = torch.tensor([
        [4.5, 5.0, 5.5, 6.0],
        [7.0, 7.5, 8.0, 8.5],
        [9.5, 10.0, 10.5, 11.0],
        [12.0, 12.5, 13.0, 13.5],
    ])  # fmt: skip
    torch.testing.assert_close(out, torch.rot90(upright, -quarter_turns), rtol=1e-6, atol=1e-5)
