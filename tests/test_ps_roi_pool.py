"""ps_roi_pool: every backend vs the NumPy reference and vs torchvision, forward and backward."""

import pytest
import torch
import torchvision
from conftest import as_tensor, random_rois, results_across_thread_counts

import roiops

DTYPES = [torch.float32, torch.float64]


def run(backend, x, rois, output_size, scale, grad=None):
    """Forward (and backward with `grad`) through the public API on one backend."""
    x = x.detach().clone().requires_grad_(grad is not None)
    with roiops.use_backend(backend):
        out = roiops.ps_roi_pool(x, rois, output_size, scale)
        if grad is None:
            return out.detach(), None
        out.backward(grad)
    return out.detach(), x.grad


def test_bins_average_their_own_channel():
    # box [0, 4) x [0, 4) -> 2x2 bins of 2x2 cells; 4 input channels for 1 output channel,
    # channel c_in = arange + 100 * c_in; bin (i, j) reads channel 2 * i + j
    base = torch.arange(36, dtype=torch.float32).reshape(6, 6)
    x = torch.stack([base + 100 * c for c in range(4)])[None]
    out = roiops.ps_roi_pool(x, torch.tensor([[0, 0.0, 0, 4, 4]]), 2)
    # mean of rows 2i..2i+1, cols 2j..2j+1 of base: 6 * (2i + 0.5) + (2j + 0.5)
    for i in range(2):
        for j in range(2):
            expected = 100 * (2 * i + j) + 6 * (2 * i + 0.5) + (2 * j + 0.5)
            assert out[0, 0, i, j].item() == pytest.approx(expected)


def test_last_row_and_column_are_not_pooled_as_in_torchvision():
    # torchvision clips bins to [0, H - 1]: a box over the whole 5x5 map pools rows and
    # columns 0..3 only; roiops gives the same numbers, and its gradient is the
    # derivative of them (nothing reaches row or column 4), where torchvision's backward
    # spreads over the 3x3 cells its own forward did not average
    x = torch.arange(4 * 25, dtype=torch.float64).reshape(1, 4, 5, 5).requires_grad_()
    rois = torch.tensor([[0, 0.0, 0, 5, 5]], dtype=torch.float64)
    out = roiops.ps_roi_pool(x, rois, 2)
    assert torch.equal(out, torchvision.ops.ps_roi_pool(x, rois, 2))
    out[0, 0, 1, 1].backward()
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[2:4, 2:4] = 0.25
    assert torch.equal(x.grad[0, 3], expected)
    xt = x.detach().clone().requires_grad_()
    torchvision.ops.ps_roi_pool(xt, rois, 2)[0, 0, 1, 1].backward()
    assert xt.grad[0, 3, 4, 4].item() == pytest.approx(1 / 9)


CASES = [(0.25, (3, 4)), (0.5, 3), (1.0, (2, 5)), (0.125, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,output_size", CASES)
def test_numba_equals_reference_bitwise(rng, dtype, scale, output_size):
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = as_tensor(rng.standard_normal((2, 3 * oh * ow, 9, 11)), dtype)
    rois = as_tensor(random_rois(rng, 2, 12, 9 / scale, 11 / scale), dtype)
    grad = as_tensor(rng.standard_normal((12, 3, oh, ow)), dtype)
    fast = run("numba", x, rois, output_size, scale, grad)
    ref = run("reference", x, rois, output_size, scale, grad)
    assert torch.equal(fast[0], ref[0])
    assert torch.equal(fast[1], ref[1])


@pytest.mark.parametrize("channel_block", [1, 2, 5])
def test_numba_kernels_equal_reference_for_any_channel_block(rng, channel_block):
    # the CPU kernels split each (image, bin) into blocks of output channels (whole
    # when the planes fit in cache, as in the tests above); partial blocks too
    from roiops._layout import rois_by_image
    from roiops.cpu import ps_roi_pool as cpu

    x = as_tensor(rng.standard_normal((2, 5 * 6, 9, 11)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 12, 18, 22), torch.float32)
    grad = as_tensor(rng.standard_normal((12, 5, 2, 3)), torch.float32)
    ref = run("reference", x, rois, (2, 3), 0.5, grad)
    order, start = (t.numpy() for t in rois_by_image(rois, 2))
    out = torch.empty(12, 5, 2, 3)
    cpu.ps_roi_pool_forward(x.numpy(), rois.numpy(), order, start, 0.5, 2, 3, channel_block,
                            out.numpy())  # fmt: skip
    gx = torch.full_like(x, float("nan"))  # every cell must be written
    cpu.ps_roi_pool_backward(grad.numpy(), rois.numpy(), order, start, 0.5, 2, 3,
                             channel_block, gx.numpy())  # fmt: skip
    assert torch.equal(out, ref[0])
    assert torch.equal(gx, ref[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale,output_size", CASES)
def test_matches_torchvision_bitwise(rng, dtype, scale, output_size):
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = as_tensor(rng.standard_normal((2, 2 * oh * ow, 10, 12)), dtype)
    rois = random_rois(rng, 2, 16, 10 / scale, 12 / scale)
    out, _ = run("numba", x, as_tensor(rois, dtype), output_size, scale)
    assert torch.equal(
        out, torchvision.ops.ps_roi_pool(x, as_tensor(rois, dtype), output_size, scale)
    )
    # the backward too, where no bin reaches the last row or column (see above)
    rois[:, 1:] = rois[:, 1:].clip(0, 8 / scale)
    rois = as_tensor(rois, dtype)
    grad = as_tensor(rng.standard_normal((16, 2, oh, ow)), dtype)
    _, gx = run("numba", x, rois, output_size, scale, grad)
    xt = x.clone().requires_grad_()
    torchvision.ops.ps_roi_pool(xt, rois, output_size, scale).backward(grad)
    assert torch.equal(gx, xt.grad)


def test_backward_deterministic_across_thread_counts(rng):
    x = as_tensor(rng.standard_normal((2, 36, 12, 12)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 40, 24, 24, min_size=4), torch.float32)
    grad = as_tensor(rng.standard_normal((40, 4, 3, 3)), torch.float32)
    runs = results_across_thread_counts(lambda: run("numba", x, rois, 3, 0.5, grad)[1])
    assert all(torch.equal(r, runs[0]) for r in runs)


def test_gradcheck_and_opcheck(rng):
    x = as_tensor(rng.standard_normal((2, 8, 6, 7)), torch.float64).requires_grad_()
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14), torch.float64)
    assert torch.autograd.gradcheck(lambda t: roiops.ps_roi_pool(t, rois, 2, 0.5), (x,))
    torch.library.opcheck(torch.ops.roiops.ps_roi_pool, (x, rois, 0.5, 2, 2))


def test_half_precision_and_module(rng):
    x = as_tensor(rng.standard_normal((1, 18, 8, 8)), torch.bfloat16)
    rois = torch.tensor([[0, 2.0, 2, 20, 24]])
    out = roiops.PSRoIPool(3, 0.25)(x, rois)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, roiops.ps_roi_pool(x.float(), rois, 3, 0.25).to(torch.bfloat16))
    assert repr(roiops.PSRoIPool(3, 0.25)) == repr(torchvision.ops.PSRoIPool(3, 0.25))


def test_bad_arguments_and_empty_boxes():
    x = torch.randn(1, 10, 6, 6)
    with pytest.raises(ValueError, match="not a multiple of the output area"):
        roiops.ps_roi_pool(x, torch.tensor([[0, 0.0, 0, 4, 4]]), 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        roiops.ps_roi_pool(x[:, :8], torch.tensor([[0, float("nan"), 0, 4, 4]]), 2)
    assert roiops.ps_roi_pool(x[:, :8], torch.zeros(0, 5), 2).shape == (0, 2, 2, 2)
    # the backward op, called by hand with a channel count its kernel cannot tile (it
    # would leave the 2 extra planes of the gradient unwritten)
    grad = torch.ones(1, 2, 2, 2)
    with pytest.raises(ValueError, match="10 channels, not a multiple of the output area"):
        torch.ops.roiops.ps_roi_pool_backward(
            grad, torch.tensor([[0, 0.0, 0, 4, 4]]), 1.0, 2, 2, 1, 10, 6, 6
        )
