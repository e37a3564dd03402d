"""CropAndResize (TensorFlow's tf.image.crop_and_resize): pencil values, TensorFlow's kernel
written out in torch, the Numba kernels against the reference bit for bit, gradients."""

import numpy as np
import pytest
import torch
from conftest import results_across_thread_counts
from hypothesis import given
from hypothesis import strategies as st
from torch.library import opcheck

import roiops
from roiops.bench import tf_crop_and_resize

TWO = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
THREE = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
ZERO = torch.zeros(1, dtype=torch.int64)


def crop(image, boxes, size, method="bilinear", extrapolation_value=0.0, indices=None):
    boxes = torch.tensor(boxes, dtype=image.dtype).reshape(-1, 4)
    indices = torch.zeros(len(boxes), dtype=torch.int64) if indices is None else indices
    return roiops.crop_and_resize(image, boxes, indices, size, method, extrapolation_value)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_pencil_values(backend):
    # the crop's first and last samples on the box's edges (normalized: 0 the first row,
    # 1 the last), bilinear between them; a box upside down flips the crop
    with roiops.use_backend(backend):
        assert crop(TWO, [0, 0, 1, 1], 1).flatten().tolist() == [2.5]  # (the centre)
        assert crop(TWO, [1, 1, 0, 0], 1).flatten().tolist() == [2.5]
        grid = [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]]
        assert crop(TWO, [0, 0, 1, 1], 3)[0, 0].tolist() == grid
        assert crop(TWO, [1, 1, 0, 0], 3)[0, 0].tolist() == [row[::-1] for row in grid[::-1]]
        both = crop(THREE, [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], 2)
        assert both[:, 0].tolist() == [[[1, 3], [7, 9]], [[1, 2], [4, 5]]]
        # nearest: the rounded position, halves up (0, 0.5, 1 -> rows 0, 1, 1)
        near = crop(TWO, [0, 0, 1, 1], 3, "nearest")[0, 0].tolist()
        assert near == [[1, 2, 2], [3, 4, 4], [3, 4, 4]]
        # samples past the image take the extrapolation value (positions 0, 1, 2 of 0..1)
        out = crop(TWO, [0, 0, 2, 2], 3, extrapolation_value=-1.0)[0, 0].tolist()
        assert out == [[1, 2, -1], [3, 4, -1], [-1, -1, -1]]
        # a crop of one row: the box's middle row; (h, w) crops
        assert crop(THREE, [0, 0, 1, 1], (1, 3))[0, 0].tolist() == [[4, 5, 6]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [(3, 4), (1, 1), (1, 5), (7, 7)])
def test_tensorflow_s_kernel_and_the_numba_kernels(rng, dtype, method, size):
    # TensorFlow's kernel written out in torch: the same outputs bit for bit, its
    # gradients (through autograd) to rounding; Numba bit for bit the reference
    x = torch.from_numpy(rng.standard_normal((2, 5, 9, 11))).to(dtype)
    boxes = torch.from_numpy(rng.uniform(-0.3, 1.3, (6, 4))).to(dtype)
    boxes[0] = torch.tensor([0.0, 0, 1, 1])
    boxes[1] = torch.tensor([0.25, 0.5, 0.75, 0.2])  # (flipped along x)
    indices = torch.tensor([0, 1, 1, 0, 1, 0])
    results = {}
    for name, fn in (("tf", tf_crop_and_resize), ("numba", None), ("reference", None)):
        xb, bb = x.clone().requires_grad_(), boxes.clone().requires_grad_()
        if fn is None:
            with roiops.use_backend(name):
                out = roiops.crop_and_resize(xb, bb, indices, size, method, -1.5)
        else:
            out = fn(xb, bb, indices, size, method, -1.5)
        g = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
        gx, gb = torch.autograd.grad(out, [xb, bb], g, allow_unused=True)
        results[name] = (out.detach(), gx, torch.zeros_like(bb) if gb is None else gb)
    for a, b in zip(results["numba"], results["reference"], strict=True):
        assert torch.equal(a, b)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    assert torch.equal(results["tf"][0], results["reference"][0])
    for a, b in zip(results["tf"][1:], results["reference"][1:], strict=True):
        torch.testing.assert_close(a, b, **tol)


@given(
    n=st.integers(1, 2),
    c=st.integers(1, 5),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    k=st.integers(0, 5),
    size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    method=st.sampled_from(["bilinear", "nearest"]),
    spread=st.sampled_from([0.5, 2.0, 1e6]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_numba_equals_reference(n, c, h, w, k, size, method, spread, dtype, seed):
    # any map (one row or column too), boxes in, past and far past the image, flipped,
    # both methods: every bit, forward and both gradients
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, c, h, w))).to(dtype)
    boxes = torch.from_numpy(rng.uniform(0.5 - spread, 0.5 + spread, (k, 4))).to(dtype)
    indices = torch.from_numpy(rng.integers(0, n, k))
    results = []
    for backend in ("numba", "reference"):
        xb, bb = x.clone().requires_grad_(), boxes.clone().requires_grad_()
        with roiops.use_backend(backend):
            out = roiops.crop_and_resize(xb, bb, indices, size, method, -1.0)
            g = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
            results.append((out.detach(), *torch.autograd.grad(out, [xb, bb], g)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_nearest_sends_the_boxes_no_gradient():
    boxes = torch.tensor([[0.1, 0.2, 0.9, 0.7]], requires_grad=True)
    out = roiops.crop_and_resize(torch.randn(1, 2, 5, 5), boxes, ZERO, 3, "nearest")
    (grad,) = torch.autograd.grad(out.sum(), [boxes])
    assert grad.eq(0).all()


def test_backward_deterministic_across_thread_counts(rng):
    x = torch.from_numpy(rng.standard_normal((2, 33, 12, 14))).float()
    boxes = torch.from_numpy(rng.uniform(-0.2, 1.2, (40, 4))).float()
    indices = torch.from_numpy(rng.integers(0, 2, 40))

    def grads():
        xb, bb = x.clone().requires_grad_(), boxes.clone().requires_grad_()
        out = roiops.crop_and_resize(xb, bb, indices, 7)
        return torch.autograd.grad(out, [xb, bb], torch.ones_like(out))

    runs = results_across_thread_counts(grads)
    for gx, gb in runs[1:]:
        assert torch.equal(gx, runs[0][0]) and torch.equal(gb, runs[0][1])


def test_gradcheck(rng):
    # the image and the boxes (samples off whole cells, inside the image)
    x = torch.from_numpy(rng.standard_normal((2, 3, 6, 7))).requires_grad_()
    boxes = torch.tensor([[0.11, 0.13, 0.83, 0.71], [0.9, 0.05, 0.21, 0.77]],
                         dtype=torch.float64, requires_grad=True)  # fmt: skip
    indices = torch.tensor([1, 0])

    def f(x, boxes):
        return roiops.crop_and_resize(x, boxes, indices, (3, 4))

    assert torch.autograd.gradcheck(f, (x, boxes), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(rng, dtype):
    x = torch.from_numpy(rng.standard_normal((1, 4, 8, 8))).to(dtype)
    boxes = torch.tensor([[0.1, 0.2, 0.9, 0.7]])
    out = roiops.crop_and_resize(x, boxes, ZERO, 5)
    assert out.dtype == dtype
    assert torch.equal(out, roiops.crop_and_resize(x.float(), boxes, ZERO, 5).to(dtype))


def test_empty_inputs_and_opcheck():
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    out = roiops.crop_and_resize(x, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 4)
    assert out.shape == (0, 3, 4, 4)
    out.sum().backward()
    assert x.grad.eq(0).all()
    rois = torch.tensor([[1.0, 0.1, 0.2, 0.9, 0.7], [0.0, 0.5, 0.5, -0.2, 1.3]])
    args = (x, rois.requires_grad_(), 3, 2, False, 0.5)
    opcheck(torch.ops.roiops.crop_and_resize.default, args)


def test_bad_arguments():
    x = torch.randn(2, 3, 5, 6)
    boxes = torch.tensor([[0.1, 0.2, 0.9, 0.7]])
    op = roiops.crop_and_resize
    with pytest.raises(ValueError, match=r"boxes must be a Tensor\[K, 4\]"):
        op(x, torch.zeros(1, 5), ZERO, 3)
    with pytest.raises(ValueError, match=r"box_indices must be a Tensor\[K\] \(K = 1 boxes\)"):
        op(x, boxes, torch.zeros(2, dtype=torch.int64), 3)
    with pytest.raises(TypeError, match="box_indices must hold integers"):
        op(x, boxes, torch.zeros(1, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match=r"box_indices must lie in \[0, 2\)"):
        op(x, boxes, torch.tensor([2]), 3)
    with pytest.raises(ValueError, match="box_indices must be whole numbers"):
        op(x, boxes, torch.tensor([0.5]), 3)
    with pytest.raises(ValueError, match="NaN or infinite"):
        op(x, boxes * float("nan"), ZERO, 3)
    with pytest.raises(ValueError, match="crop_size must be positive"):
        op(x, boxes, ZERO, (0, 3))
    with pytest.raises(TypeError, match="crop_size must be an int or a pair"):
        op(x, boxes, ZERO, "3")
    with pytest.raises(ValueError, match="method must be 'bilinear' or 'nearest'"):
        op(x, boxes, ZERO, 3, "bicubic")
    with pytest.raises(TypeError, match="extrapolation_value must be a real number"):
        op(x, boxes, ZERO, 3, "bilinear", None)
    with pytest.raises(ValueError, match="box_indices is on meta but input is on cpu"):
        op(x, boxes, ZERO.to("meta"), 3)
    with pytest.raises(TypeError, match="boxes must be a floating point tensor"):
        op(x, boxes.long(), ZERO, 3)
