"""roi_align: every backend vs the NumPy reference and vs torchvision, forward and backward."""

import json
import pathlib

import numpy as np
import pytest
import torch
import torchvision
from conftest import as_tensor, random_rois, results_across_thread_counts
from hypothesis import given
from hypothesis import strategies as st

import roiops
from roiops import reference

DTYPES = [torch.float32, torch.float64]


def run(backend, x, rois, output_size, scale, ratio, aligned, mode="avg", grad=None):
    """Forward (and backward with `grad`) through the public API on one backend."""
    x = x.detach().clone().requires_grad_(grad is not None)
    with roiops.use_backend(backend):
        out = roiops.roi_align(x, rois, output_size, scale, ratio, aligned, mode)
        if grad is None:
            return out.detach(), None
        out.backward(grad)
    return out.detach(), x.grad


# --------------------------------------------------------------- hand-checkable cases
# Detectron2's pencil example: a 5x5 arange image, value = 5 * row + col.
ARANGE = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)


def test_arange_image_unaligned_matches_detectron2():
    # 4x4 bins of 0.5 cell over [1, 3]: one sample per bin at 1.25, 1.75, ...
    out = roiops.roi_align(ARANGE, torch.tensor([[0, 1.0, 1, 3, 3]]), 4, 1.0, 0, False)
    expected = [
        [7.5, 8, 8.5, 9],
        [10, 10.5, 11, 11.5],
        [12.5, 13, 13.5, 14],
        [15, 15.5, 16, 16.5],
    ]
    torch.testing.assert_close(out[0, 0], torch.tensor(expected))


def test_arange_image_aligned_matches_detectron2():
    # aligned=True shifts every sample by -0.5: values drop by 0.5 * (5 + 1) = 3
    out = roiops.roi_align(ARANGE, torch.tensor([[0, 1.0, 1, 3, 3]]), 4, 1.0, 0, True)
    expected = [
        [4.5, 5.0, 5.5, 6.0],
        [7.0, 7.5, 8.0, 8.5],
        [9.5, 10.0, 10.5, 11.0],
        [12.0, 12.5, 13.0, 13.5],
    ]
    torch.testing.assert_close(out[0, 0], torch.tensor(expected))


def test_arange_image_four_samples_and_max():
    # one 2x2-cell bin over [1, 3] with 2x2 samples at 1.5 and 2.5:
    # values 5 * 1.5 + 1.5 = 9, 10, 14, 15 -> avg 12, max 15 (the last sample, index 3)
    rois = torch.tensor([[0, 1.0, 1, 3, 3]])
    avg = roiops.roi_align(ARANGE, rois, 1, 1.0, 2, False)
    top = roiops.roi_align(ARANGE, rois, 1, 1.0, 2, False, mode="max")
    assert avg.item() == 12.0 and top.item() == 15.0
    x = ARANGE.clone().requires_grad_()
    roiops.roi_align(x, rois, 1, 1.0, 2, False, mode="max").backward()
    # the winning sample (2.5, 2.5) splits its gradient over 4 cells, 1/4 each
    expected = torch.zeros(5, 5)
    expected[2:4, 2:4] = 0.25
    torch.testing.assert_close(x.grad[0, 0], expected)


# mmcv's roi_align (pool_mode "max" is the article's max over the sampling points, which
# neither torchvision nor detectron2 ships): outputs and input gradients of its CPU kernel,
# stored by `python benchmarks/mmcv_anchor.py --write-expected tests/data/mmcv_roi_align.json`
# (it builds the kernel from mmcv's source release, which a test cannot download). Maps
# of small integers make many bins hold equal maxima: the first sampling point wins in
# both. (Not covered, where mmcv differs: a bin with no sampling point, 0 here and
# -10000 in mmcv's CPU kernel, -FLT_MAX in its CUDA one; values below -10000, which its
# CPU kernel never outputs; NaN.)
MMCV_ROI_ALIGN = json.loads(
    (pathlib.Path(__file__).parent / "data" / "mmcv_roi_align.json").read_text()
)["cases"]


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("case", range(len(MMCV_ROI_ALIGN)))
def test_max_mode_is_mmcv_max_pool_mode(backend, case):
    c = MMCV_ROI_ALIGN[case]
    dtype = getattr(torch, c["dtype"])
    x, rois, grad = (torch.tensor(c[key], dtype=dtype) for key in ("input", "rois", "grad_output"))
    out, gx = run(backend, x, rois, c["output_size"], c["spatial_scale"], c["sampling_ratio"],
                  c["aligned"], c["mode"], grad)  # fmt: skip
    expected, expected_grad = (torch.tensor(c[k], dtype=dtype) for k in ("output", "grad_input"))
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    # the gradient bit for bit; the outputs too, but for the sign of a zero: mmcv gives a
    # point outside the map the value 0 * x[0] (-0.0 where the map's first value is
    # negative), roiops 0
    assert torch.equal(gx.view(bits), expected_grad.view(bits))
    assert torch.equal(out, expected)
    nonzero = expected != 0
    assert torch.equal(out[nonzero].view(bits), expected[nonzero].view(bits))


def test_backward_by_hand():
    # avg mode, one bin, one sample at (1.25, 1.75): weights (1-dy)(1-dx) etc.
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)
    out = roiops.roi_align(x, torch.tensor([[0, 1.5, 1.0, 2.0, 1.5]]), 1, 1.0, 1, False)
    out.backward()
    # RoI width 0.5 -> forced to 1 (legacy), height 0.5 -> 1: sample at (1.5, 2.0)
    expected = torch.zeros(4, 4)
    expected[1, 2] = 0.5
    expected[2, 2] = 0.5
    torch.testing.assert_close(x.grad[0, 0], expected)


# ------------------------------------------------------------ vs reference and anchor
CASES = [
    # (aligned, sampling_ratio, spatial_scale, output_size)
    (False, 0, 0.25, (3, 4)),
    (False, 2, 0.5, 3),
    (True, 0, 0.25, (4, 3)),
    (True, 1, 0.5, 2),
    (True, 3, 1.0, (2, 5)),
    (False, -1, 0.125, 7),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned,ratio,scale,output_size", CASES)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_numba_equals_reference_bitwise(rng, dtype, aligned, ratio, scale, output_size, mode):
    x = as_tensor(rng.standard_normal((2, 19, 9, 11)), dtype)
    rois = as_tensor(random_rois(rng, 2, 12, 9 / scale, 11 / scale), dtype)
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    grad = as_tensor(rng.standard_normal((12, 19, oh, ow)), dtype)
    out_fast, grad_fast = run("numba", x, rois, output_size, scale, ratio, aligned, mode, grad)
    out_ref, grad_ref = run("reference", x, rois, output_size, scale, ratio, aligned, mode, grad)
    # same arithmetic in the same order: identical bits, not merely close
    assert torch.equal(out_fast, out_ref)
    assert torch.equal(grad_fast, grad_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["max", "onnx_max"])
@pytest.mark.parametrize("ratio", [3, 4, 0])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0
def test_max_backward_of_small_and_large_grids_is_the_references_bits(rng, dtype, mode, ratio):
    # the CPU kernel adds a bin's gradient as masked whole-channel vectors where its grid
    # has at most MASKED_SAMPLES (9) points and channel by channel where it has more: 3x3
    # and 4x4 grids, and adaptive grids of 1 to 121 points in one call (an argmax on a
    # point outside the map too); compared as bits, so a -0.0 would show
    x = as_tensor(rng.standard_normal((2, 37, 12, 14)), dtype)
    rois = torch.tensor(
        [[0, 0, 0, 13, 11], [1, 2, 1, 6, 5], [0, 3.3, 2.2, 12.9, 11.7], [1, -2, -1, 25, 23],
         [1, -6, -5, 2, 3], [0, 5, 5, 5.5, 5.25]], dtype=dtype,
    )  # fmt: skip
    grad = as_tensor(rng.standard_normal((6, 37, 2, 2)), dtype)
    grad[:, ::5] = 0.0
    # points outside the map win bins of the fifth box: an infinite gradient there must
    # reach no cell (elsewhere it gives inf, and NaN on zero-weight corners, as it does in
    # the reference)
    grad[4] = float("inf")
    fast = run("numba", x, rois, 2, 1.0, ratio, True, mode, grad)
    ref = run("reference", x, rois, 2, 1.0, ratio, True, mode, grad)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(fast[0].view(bits), ref[0].view(bits))
    assert torch.equal(fast[1].view(bits), ref[1].view(bits))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned,ratio,scale,output_size", CASES)
def test_matches_torchvision(rng, dtype, aligned, ratio, scale, output_size):
    x = as_tensor(rng.standard_normal((2, 5, 10, 12)), dtype)
    rois = as_tensor(random_rois(rng, 2, 16, 10 / scale, 12 / scale), dtype)
    out, grad = run("numba", x, rois, output_size, scale, ratio, aligned, "avg", None)
    xt = x.clone().requires_grad_()
    expected = torchvision.ops.roi_align(xt, rois, output_size, scale, ratio, aligned)
    # forward: same float operations in the same order as torchvision's CPU kernel
    assert torch.equal(out, expected.detach())
    g = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    expected.backward(g)
    _, grad = run("numba", x, rois, output_size, scale, ratio, aligned, "avg", g)
    # backward: torchvision computes g * w / count, we compute (g / count) * w
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad, xt.grad, **tol)


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 20),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    k=st.integers(0, 8),
    oh=st.integers(1, 4),
    ow=st.integers(1, 4),
    ratio=st.integers(-1, 3),
    scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 3, 0.125]),
    aligned=st.booleans(),
    mode=st.sampled_from(["avg", "max"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_numba_equals_reference(n, c, h, w, k, oh, ow, ratio, scale, aligned, mode, seed):
    rng = np.random.default_rng(seed)
    x = as_tensor(rng.standard_normal((n, c, h, w)), torch.float32)
    rois = as_tensor(random_rois(rng, n, k, h / scale, w / scale), torch.float32)
    grad = as_tensor(rng.standard_normal((k, c, oh, ow)), torch.float32)
    fast = run("numba", x, rois, (oh, ow), scale, ratio, aligned, mode, grad)
    ref = run("reference", x, rois, (oh, ow), scale, ratio, aligned, mode, grad)
    assert torch.equal(fast[0], ref[0])
    assert torch.equal(fast[1], ref[1])
    if mode == "avg":
        expected = torchvision.ops.roi_align(x, rois, (oh, ow), scale, ratio, aligned)
        assert torch.equal(fast[0], expected)


# ------------------------------------------------------------------ layouts, dtypes
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_channels_last_input(rng, mode):
    x = as_tensor(rng.standard_normal((2, 40, 12, 10)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 10, 24, 20), torch.float32)
    grad = torch.randn(10, 40, 3, 3)
    a = run("numba", x, rois, 3, 0.5, 2, True, mode, grad)
    b = run(
        "numba", x.contiguous(memory_format=torch.channels_last), rois, 3, 0.5, 2, True, mode, grad
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(rng, dtype):
    x = as_tensor(rng.standard_normal((1, 8, 10, 10)), dtype)
    rois = as_tensor(random_rois(rng, 1, 6, 20, 20), torch.float32)
    x32 = x.float().requires_grad_()
    xh = x.clone().requires_grad_()
    out = roiops.roi_align(xh, rois, 3, 0.5, 2, True)
    assert out.dtype == dtype
    expected = roiops.roi_align(x32, rois, 3, 0.5, 2, True)
    assert torch.equal(out, expected.to(dtype))
    out.float().sum().backward()
    expected.sum().backward()
    assert xh.grad.dtype == dtype
    torch.testing.assert_close(xh.grad.float(), x32.grad, rtol=1e-2, atol=1e-2)


def test_list_of_boxes_equals_rois_tensor(rng):
    x = as_tensor(rng.standard_normal((2, 4, 8, 8)), torch.float32)
    b0 = torch.tensor([[0.0, 0, 10, 12], [2, 3, 9, 9]])
    b1 = torch.tensor([[1.0, 1, 15, 15]])
    rois = torch.tensor([[0, 0.0, 0, 10, 12], [0, 2, 3, 9, 9], [1, 1, 1, 15, 15]])
    a = roiops.roi_align(x, [b0, b1], 2, 0.5, 2)
    b = roiops.roi_align(x, (b0, b1), (2, 2), 0.5, 2)
    assert torch.equal(a, roiops.roi_align(x, rois, 2, 0.5, 2)) and torch.equal(a, b)


# ------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_no_boxes(mode):
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = roiops.roi_align(x, torch.zeros(0, 5), (2, 3), 1.0, 2, mode=mode)
    assert out.shape == (0, 3, 2, 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    empty = roiops.roi_align(torch.zeros(0, 3, 5, 5), torch.zeros(0, 5), 2, mode=mode)
    assert empty.shape == (0, 3, 2, 2)
    assert roiops.roi_align(x, [], 2, mode=mode).shape == (0, 3, 2, 2)


def test_degenerate_and_outside_boxes_match_torchvision():
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    rois = torch.tensor(
        [
            [0, 4.0, 4, 2, 2],  # inverted
            [0, 3.0, 3, 3, 3],  # zero size
            [0, -20.0, -20, -10, -10],  # fully outside, above-left
            [0, 10.0, 10, 30, 30],  # fully outside, below-right
            [0, -3.0, 2, 8, 9],  # partly outside
        ],
        dtype=torch.float64,
    )
    for aligned in (False, True):
        for ratio in (0, 2):
            out = roiops.roi_align(x, rois, 3, 1.0, ratio, aligned)
            assert torch.equal(out, torchvision.ops.roi_align(x, rois, 3, 1.0, ratio, aligned))


def test_zero_size_map_gives_zeros():
    x = torch.randn(1, 2, 0, 4, requires_grad=True)
    out = roiops.roi_align(x, torch.tensor([[0, 0.0, 0, 3, 3]]), 2, mode="max")
    assert torch.equal(out, torch.zeros(1, 2, 2, 2))


# ------------------------------------------------------------- autograd machinery
@pytest.mark.parametrize("aligned,ratio", [(False, 2), (True, 0), (True, 1)])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_gradcheck(rng, aligned, ratio, mode):
    x = as_tensor(rng.standard_normal((2, 2, 6, 7)), torch.float64).requires_grad_()
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14, min_size=1.0), torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: roiops.roi_align(t, rois, (2, 3), 0.5, ratio, aligned, mode), (x,)
    )


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_opcheck(rng, mode):
    x = as_tensor(rng.standard_normal((2, 3, 6, 7)), torch.float32).requires_grad_()
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14, min_size=1.0), torch.float32)
    op = torch.ops.roiops.roi_align if mode == "avg" else torch.ops.roiops.roi_align_max
    torch.library.opcheck(op, (x, rois, 0.5, 2, 3, 2, True))
    grad = torch.randn(5, 3, 2, 3)
    args = (rois, 0.5, 2, 3, 2, True, 2, 3, 6, 7)
    if mode == "avg":
        torch.library.opcheck(torch.ops.roiops.roi_align_backward, (grad, *args))
    else:
        _, argmax = op(x, rois, 0.5, 2, 3, 2, True)
        torch.library.opcheck(torch.ops.roiops.roi_align_backward, (grad, *args, argmax))


def test_torch_compile_fullgraph(rng):
    x = as_tensor(rng.standard_normal((2, 3, 6, 7)), torch.float32).requires_grad_()
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14, min_size=1.0), torch.float32)

    def f(t):
        return roiops.roi_align(t, rois, 2, 0.5, 2, True).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    (g_compiled,) = torch.autograd.grad(compiled(x), x)
    (g_eager,) = torch.autograd.grad(f(x), x)
    assert torch.equal(g_compiled, g_eager)


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_backward_bitwise_deterministic_across_runs_and_threads(rng, mode):
    x = as_tensor(rng.standard_normal((2, 48, 20, 20)), torch.float32)
    # many overlapping boxes: many RoIs add into the same cells
    rois = as_tensor(random_rois(rng, 2, 64, 40, 40, min_size=4), torch.float32)
    grad = torch.randn(64, 48, 7, 7)
    results = results_across_thread_counts(
        lambda: run("numba", x, rois, 7, 0.5, 0, True, mode, grad)[1]
    )
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_reference_geometry_is_what_the_kernels_use():
    # the explain command prints roi_geometry(); check it against the article's example
    g = reference.roi_geometry((0, 0, 665, 665), 1 / 32, 7, 7, 2, False, np.float64)
    assert g.height == pytest.approx(665 / 32) and g.bin_size_h == pytest.approx(665 / 32 / 7)
    assert (g.grid_h, g.grid_w, g.count) == (2, 2, 4)


@pytest.mark.parametrize(
    "shape", [(1, 16, 32, 32), (2, 24, 16, 64), (1, 20, 8, 128), (1, 17, 8, 8), (2, 3, 32, 32)]
)
def test_channels_last_conversion_paths_agree(shape):
    # 4 KiB-strided planes take the tiled Numba transpose, others torch's copy
    from roiops.cpu.layout import channels_last_array

    x = torch.randn(shape)
    assert np.array_equal(channels_last_array(x), x.permute(0, 2, 3, 1).numpy())
    strided = torch.randn(shape[0], shape[1], shape[2], shape[3] * 2)[..., ::2]
    assert np.array_equal(channels_last_array(strided), strided.permute(0, 2, 3, 1).numpy())


# --------------------------------------------------------------------------- box gradients
BOX_CASES = [(True, 2, "avg"), (False, 0, "avg"), (True, 0, "max"), (False, 1, "max")]


def box_lists(dtype=torch.float64):
    """Two images' boxes: large, small, a legacy sub-cell box (at scale 0.5), one
    reaching past the map."""
    b0 = torch.tensor([[3.3, 2.7, 17.9, 15.2], [0.4, 1.1, 4.3, 3.9], [6.31, 6.17, 7.13, 7.43]])
    b1 = torch.tensor([[5.1, 6.2, 9.9, 12.8], [14.2, 12.3, 27.7, 25.1]])
    return [b0.to(dtype), b1.to(dtype)]


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("aligned,ratio,mode", BOX_CASES)
def test_box_gradient_gradcheck(backend, aligned, ratio, mode):
    # d(loss)/d(x1, y1, x2, y2): the sample count of adaptive sampling is held fixed (the
    # gradient of the piece the box is in), as are the sizes of legacy sub-cell boxes
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    boxes = tuple(b.requires_grad_() for b in box_lists())
    with roiops.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda *bs: roiops.roi_align(x, list(bs), (3, 2), 0.5, ratio, aligned, mode), boxes
        )


def test_box_gradient_numba_matches_reference_and_input_gradient_unchanged(rng):
    x = as_tensor(rng.standard_normal((2, 19, 10, 12)), torch.float32)
    grads = {}
    for backend in ("numba", "reference"):
        boxes = [b.requires_grad_() for b in box_lists(torch.float32)]
        xb = x.clone().requires_grad_()
        with roiops.use_backend(backend):
            out = roiops.roi_align(xb, boxes, 3, 0.5, 2, True)
            out.backward(torch.ones_like(out))
        grads[backend] = (torch.cat([b.grad for b in boxes]), xb.grad)
    torch.testing.assert_close(grads["numba"][0], grads["reference"][0], rtol=1e-4, atol=1e-5)
    assert torch.equal(grads["numba"][1], grads["reference"][1])


def test_no_box_gradient_unless_asked(rng):
    # the feature map is kept for backward only when the boxes require grad
    x = as_tensor(rng.standard_normal((1, 2, 6, 6)), torch.float32).requires_grad_()
    boxes = torch.tensor([[0, 1.0, 1, 8, 8]], requires_grad=False)
    roiops.roi_align(x, boxes, 2, 0.5).sum().backward()
    assert boxes.grad is None and x.grad is not None
    boxes.requires_grad_()
    out = roiops.roi_align(x.detach(), boxes, 2, 0.5)
    (g,) = torch.autograd.grad(out.sum(), boxes)
    assert g[:, 0].eq(0).all() and g[:, 1:].abs().sum() > 0
