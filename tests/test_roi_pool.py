"""roi_pool: every backend vs the NumPy reference and vs torchvision, forward and backward."""

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


def run(backend, x, rois, output_size, scale, grad=None):
    x = x.detach().clone().requires_grad_(grad is not None)
    with roiops.use_backend(backend):
        out = roiops.roi_pool(x, rois, output_size, scale)
        if grad is None:
            return out.detach(), None
        out.backward(grad)
    return out.detach(), x.grad


def test_arange_image_by_hand():
    # value = 5 * row + col; box [1, 1, 3, 3] -> cells 1..3 (end inclusive), 3x3 cells
    # in 2x2 bins of 1.5 cells: rows/cols [1, 3) and [2, 4); the max is the bottom-right
    x = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5).requires_grad_()
    out = roiops.roi_pool(x, torch.tensor([[0, 1.0, 1, 3, 3]]), 2, 1.0)
    torch.testing.assert_close(out[0, 0], torch.tensor([[12.0, 13], [17, 18]]))
    out.sum().backward()
    expected = torch.zeros(5, 5)
    expected[2, 2] = expected[2, 3] = expected[3, 2] = expected[3, 3] = 1
    torch.testing.assert_close(x.grad[0, 0], expected)


def test_overlapping_bins_route_gradient_to_one_cell():
    # box of 3 cells in 2 bins: both bins contain the middle cell, which is the max
    x = torch.zeros(1, 1, 1, 3)
    x[0, 0, 0, 1] = 5
    x.requires_grad_()
    out = roiops.roi_pool(x, torch.tensor([[0, 0.0, 0, 2, 0]]), (1, 2), 1.0)
    assert out.tolist() == [[[[5.0, 5.0]]]]
    out.backward(torch.tensor([[[[1.0, 2.0]]]]))
    assert x.grad.tolist() == [[[[0.0, 3.0, 0.0]]]]


def test_rounding_is_half_away_from_zero():
    # 2.5 rounds to 3 (not to even 2): the box starts at cell 3
    q = reference.quantize_roi((2.5, 2.5, 5.5, 5.5), 1.0)
    assert (q.start_h, q.start_w, q.height, q.width) == (3, 3, 4, 4)
    assert reference.round_half_away(-2.5) == -3
    assert reference.round_half_away(0.49999997) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,output_size", [(0.25, (3, 4)), (0.5, 2), (1.0, (2, 5)), (1 / 3, 7)])
def test_numba_equals_reference_and_torchvision(rng, dtype, scale, output_size):
    x = as_tensor(rng.standard_normal((2, 19, 9, 11)), dtype)
    rois = as_tensor(random_rois(rng, 2, 12, 9 / scale, 11 / scale), dtype)
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    grad = as_tensor(rng.standard_normal((12, 19, oh, ow)), dtype)
    fast = run("numba", x, rois, output_size, scale, grad)
    ref = run("reference", x, rois, output_size, scale, grad)
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])
    xt = x.clone().requires_grad_()
    expected = torchvision.ops.roi_pool(xt, rois, output_size, scale)
    expected.backward(grad)
    # max and argmax routing: exact, and torchvision also adds in RoI order
    assert torch.equal(fast[0], expected.detach())
    assert torch.equal(fast[1], xt.grad)


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 20),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    k=st.integers(0, 8),
    oh=st.integers(1, 5),
    ow=st.integers(1, 5),
    scale=st.sampled_from([1.0, 0.5, 0.25, 1 / 3, 0.125]),
    seed=st.integers(0, 2**31 - 1),
    ties=st.booleans(),
)
def test_property_numba_equals_reference_and_torchvision(n, c, h, w, k, oh, ow, scale, seed, ties):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, c, h, w))
    if ties:  # few distinct values: ties must go to the first cell in row-major order
        values = np.round(values)
    x = as_tensor(values, torch.float32)
    rois = as_tensor(random_rois(rng, n, k, h / scale, w / scale), torch.float32)
    grad = as_tensor(rng.standard_normal((k, c, oh, ow)), torch.float32)
    fast = run("numba", x, rois, (oh, ow), scale, grad)
    ref = run("reference", x, rois, (oh, ow), scale, grad)
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])
    xt = x.clone().requires_grad_()
    expected = torchvision.ops.roi_pool(xt, rois, (oh, ow), scale)
    expected.backward(grad)
    assert torch.equal(fast[0], expected.detach()) and torch.equal(fast[1], xt.grad)


def test_channels_last_and_half(rng):
    x = as_tensor(rng.standard_normal((2, 33, 12, 10)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 10, 24, 20), torch.float32)
    a = roiops.roi_pool(x, rois, 3, 0.5)
    b = roiops.roi_pool(x.contiguous(memory_format=torch.channels_last), rois, 3, 0.5)
    assert torch.equal(a, b)
    h = roiops.roi_pool(x.half(), rois, 3, 0.5)
    assert h.dtype == torch.float16
    assert torch.equal(h, roiops.roi_pool(x.half().float(), rois, 3, 0.5).half())


def test_empty_and_outside():
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    assert roiops.roi_pool(x, torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    assert roiops.roi_pool(torch.zeros(0, 3, 5, 5), torch.zeros(0, 5), 2).shape == (0, 3, 2, 2)
    rois = torch.tensor([[0, 50.0, 50, 60, 60], [1, -9.0, -9, -5, -5], [1, 3.0, 3, 1, 1]])
    out = roiops.roi_pool(x, rois, 2)
    assert torch.equal(out, torchvision.ops.roi_pool(x, rois, 2))
    out.sum().backward()
    assert torch.equal(out[:2], torch.zeros(2, 3, 2, 2))  # outside: empty bins give 0


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_inference_op_equals_the_training_op(rng, backend):
    x = as_tensor(np.round(rng.standard_normal((2, 7, 9, 11)) * 2), torch.float32)  # ties
    rois = random_rois(rng, 2, 12, 18, 22)
    rois[:3, 1:] = [[50, 50, 60, 60], [-9, -9, -5, -5], [3, 3, 1, 1]]  # outside, inverted
    rois = as_tensor(rois, torch.float32)
    with roiops.use_backend(backend):
        out, _ = torch.ops.roiops.roi_pool(x, rois, 0.5, 3, 4)
        alone = torch.ops.roiops.roi_pool_inference(x, rois, 0.5, 3, 4)
        assert torch.equal(alone, out)
        empty = torch.ops.roiops.roi_pool_inference(x, rois[:0], 0.5, 3, 4)
        assert empty.shape == (0, 7, 3, 4)


def test_calls_without_autograd_skip_the_argmax(rng, monkeypatch):
    import roiops.functional as functional

    calls = []
    call, with_argmax = functional.call, functional.roi_pool_op
    monkeypatch.setattr(functional, "call", lambda op, *a: calls.append(op) or call(op, *a))
    x = as_tensor(rng.standard_normal((1, 3, 6, 6)), torch.float32)
    rois = as_tensor(random_rois(rng, 1, 4, 12, 12, min_size=1.0), torch.float32)
    plain = roiops.roi_pool(x, rois, 2, 0.5)
    with torch.no_grad():
        under_no_grad = roiops.roi_pool(x.requires_grad_(), rois, 2, 0.5)
    trained = roiops.roi_pool(x, rois, 2, 0.5)
    inference = functional.roi_pool_inference_op
    assert calls == [inference, inference, with_argmax]
    assert torch.equal(plain, trained) and torch.equal(under_no_grad, trained)
    assert trained.requires_grad and not under_no_grad.requires_grad


def test_boxes_that_require_grad_over_a_map_that_does_not(rng):
    # as torchvision: autograd records the call (the output requires grad) and backward
    # runs, giving the boxes no gradient (roiops chose the argmax-free op here and its
    # backward failed until 2026-11-28)
    x = as_tensor(rng.standard_normal((2, 3, 6, 6)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 4, 12, 12, min_size=1.0), torch.float32)
    boxes = rois.clone().requires_grad_()
    out = roiops.roi_pool(x, boxes, 2, 0.5)
    theirs = torchvision.ops.roi_pool(x, rois.clone().requires_grad_(), 2, 0.5)
    assert out.requires_grad == theirs.requires_grad
    out.sum().backward()
    assert boxes.grad is None and torch.equal(out, theirs)


def test_torch_compile_fullgraph_with_and_without_autograd(rng):
    x = as_tensor(rng.standard_normal((2, 3, 6, 7)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14, min_size=1.0), torch.float32)

    def f(t):
        return roiops.roi_pool(t, rois, 2, 0.5).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), f(x))
    x.requires_grad_()
    (g_compiled,) = torch.autograd.grad(compiled(x), x)
    (g_eager,) = torch.autograd.grad(f(x), x)
    assert torch.equal(g_compiled, g_eager)


def test_gradcheck(rng):
    x = as_tensor(rng.standard_normal((2, 2, 6, 7)), torch.float64).requires_grad_()
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14, min_size=1.0), torch.float64)
    assert torch.autograd.gradcheck(lambda t: roiops.roi_pool(t, rois, (2, 3), 0.5), (x,))


def test_opcheck(rng):
    x = as_tensor(rng.standard_normal((2, 3, 6, 7)), torch.float32).requires_grad_()
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14, min_size=1.0), torch.float32)
    torch.library.opcheck(torch.ops.roiops.roi_pool, (x, rois, 0.5, 2, 3))
    torch.library.opcheck(torch.ops.roiops.roi_pool_inference, (x.detach(), rois, 0.5, 2, 3))
    _, argmax = torch.ops.roiops.roi_pool(x, rois, 0.5, 2, 3)
    grad = torch.randn(5, 3, 2, 3)
    torch.library.opcheck(torch.ops.roiops.roi_pool_backward, (grad, argmax, rois, 0.5, 2, 3, 6, 7))


def test_backward_bitwise_deterministic_across_threads(rng):
    x = as_tensor(rng.standard_normal((2, 48, 20, 20)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 64, 20, 20, min_size=4), torch.float32)
    grad = torch.randn(64, 48, 7, 7)
    results = results_across_thread_counts(lambda: run("numba", x, rois, 7, 1.0, grad)[1])
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_hand_made_argmax_never_writes_out_of_bounds():
    grad = torch.ones(1, 1, 1, 2)
    argmax = torch.tensor([[[[10**6], [-7]]]], dtype=torch.int32)  # [K, ph, pw, C]
    rois = torch.tensor([[0, 0.0, 0, 1, 1]])
    out = torch.ops.roiops.roi_pool_backward(grad, argmax, rois, 1.0, 1, 1, 2, 2)
    assert torch.equal(out, torch.zeros(1, 1, 2, 2))
