"""ps_roi_align: every backend vs the NumPy reference and vs torchvision, forward and backward."""

import pytest
import torch
import torchvision
from conftest import as_tensor, random_rois, results_across_thread_counts

import roiops

DTYPES = [torch.float32, torch.float64]


def run(backend, x, rois, output_size, scale, ratio, grad=None):
    """Forward (and backward with `grad`) through the public API on one backend."""
    x = x.detach().clone().requires_grad_(grad is not None)
    with roiops.use_backend(backend):
        out = roiops.ps_roi_align(x, rois, output_size, scale, ratio)
        if grad is None:
            return out.detach(), None
        out.backward(grad)
    return out.detach(), x.grad


def test_each_bin_reads_its_own_channel():
    # 2x2 bins, 2 output channels: 8 input channels, channel c_in = 10 * c_in + arange;
    # bin (i, j) of output channel c reads channel (c * 2 + i) * 2 + j. Box [0, 4] x [0, 4]
    # aligned: bins of 2 cells from -0.5, one sample at their centres (0.5 and 2.5)
    base = torch.arange(25, dtype=torch.float32).reshape(5, 5)
    x = torch.stack([base + 100 * c for c in range(8)])[None]
    out = roiops.ps_roi_align(x, torch.tensor([[0, 0.0, 0, 4, 4]]), 2, 1.0, 1)
    at = {
        (0, 0): 5 * 0.5 + 0.5,
        (0, 1): 5 * 0.5 + 2.5,
        (1, 0): 5 * 2.5 + 0.5,
        (1, 1): 5 * 2.5 + 2.5,
    }
    for c in range(2):
        for (i, j), value in at.items():
            assert out[0, c, i, j].item() == pytest.approx(100 * ((c * 2 + i) * 2 + j) + value)


def test_backward_lands_in_the_bin_s_channel_only():
    x = torch.zeros(1, 4, 6, 6, requires_grad=True)
    out = roiops.ps_roi_align(x, torch.tensor([[0, 1.0, 1, 5, 5]]), 2, 1.0, 2)
    grad = torch.zeros_like(out)
    grad[0, 0, 1, 0] = 1.0  # bin (1, 0): channel 2
    out.backward(grad)
    per_channel = x.grad.abs().sum(dim=(0, 2, 3))
    assert per_channel.nonzero().flatten().tolist() == [2]
    assert x.grad.sum().item() == pytest.approx(1.0)


CASES = [(0, 0.25, (3, 4)), (2, 0.5, 3), (-1, 0.125, 2), (1, 1.0, (2, 5))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio,scale,output_size", CASES)
def test_numba_equals_reference_bitwise(rng, dtype, ratio, scale, output_size):
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = as_tensor(rng.standard_normal((2, 3 * oh * ow, 9, 11)), dtype)
    rois = as_tensor(random_rois(rng, 2, 12, 9 / scale, 11 / scale), dtype)
    grad = as_tensor(rng.standard_normal((12, 3, oh, ow)), dtype)
    fast = run("numba", x, rois, output_size, scale, ratio, grad)
    ref = run("reference", x, rois, output_size, scale, ratio, grad)
    assert torch.equal(fast[0], ref[0])
    assert torch.equal(fast[1], ref[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio,scale,output_size", CASES)
def test_matches_torchvision_bitwise(rng, dtype, ratio, scale, output_size):
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = as_tensor(rng.standard_normal((2, 2 * oh * ow, 10, 12)), dtype)
    # boxes of at least one cell: torchvision gives NaN (0 / 0) for empty adaptive grids
    rois = as_tensor(random_rois(rng, 2, 16, 10 / scale, 12 / scale, min_size=1 / scale), dtype)
    grad = as_tensor(rng.standard_normal((16, 2, oh, ow)), dtype)
    out, gx = run("numba", x, rois, output_size, scale, ratio, grad)
    xt = x.clone().requires_grad_()
    expected = torchvision.ops.ps_roi_align(xt, rois, output_size, scale, ratio)
    expected.backward(grad)
    # the same float operations in the same order as torchvision's CPU kernel
    assert torch.equal(out, expected.detach())
    assert torch.equal(gx, xt.grad)


@pytest.mark.parametrize("channel_block", [1, 2, 5])
@pytest.mark.parametrize("ratio", [0, 2])
def test_numba_kernels_equal_reference_for_any_channel_block(rng, channel_block, ratio):
    # the CPU kernels split each (image, bin) into blocks of output channels (whole
    # when the planes fit in cache, as in the tests above); partial blocks too, and
    # boxes reaching past the map (points outside it count as zeros)
    from roiops._layout import rois_by_image
    from roiops.cpu import ps_roi_align as cpu

    x = as_tensor(rng.standard_normal((2, 5 * 6, 9, 11)), torch.float32)
    rois = random_rois(rng, 2, 12, 18, 22)
    rois[::3, 1:] += 6.0  # past the right and bottom edges
    rois = as_tensor(rois, torch.float32)
    grad = as_tensor(rng.standard_normal((12, 5, 2, 3)), torch.float32)
    ref = run("reference", x, rois, (2, 3), 0.5, ratio, grad)
    order, start = (t.numpy() for t in rois_by_image(rois, 2))
    out = torch.empty(12, 5, 2, 3)
    cpu.ps_roi_align_forward(x.numpy(), rois.numpy(), order, start, 0.5, 2, 3, ratio,
                             channel_block, out.numpy())  # fmt: skip
    gx = torch.full_like(x, float("nan"))  # every cell must be written
    cpu.ps_roi_align_backward(grad.numpy(), rois.numpy(), order, start, 0.5, 2, 3, ratio,
                              channel_block, gx.numpy())  # fmt: skip
    assert torch.equal(out, ref[0])
    assert torch.equal(gx, ref[1])


def test_empty_adaptive_grid_gives_zero_where_torchvision_gives_nan():
    x = torch.randn(1, 4, 6, 6)
    rois = torch.tensor([[0, 2.0, 2, 2, 2]])  # zero size: ceil(0 / 2) = 0 samples
    assert torch.isnan(torchvision.ops.ps_roi_align(x, rois, 2, 1.0, 0)).all()
    assert torch.equal(roiops.ps_roi_align(x, rois, 2, 1.0, 0), torch.zeros(1, 1, 2, 2))


def test_backward_deterministic_across_thread_counts(rng):
    x = as_tensor(rng.standard_normal((2, 36, 12, 12)), torch.float32)
    rois = as_tensor(random_rois(rng, 2, 40, 24, 24, min_size=4), torch.float32)
    grad = as_tensor(rng.standard_normal((40, 4, 3, 3)), torch.float32)
    runs = results_across_thread_counts(lambda: run("numba", x, rois, 3, 0.5, 2, grad)[1])
    assert all(torch.equal(r, runs[0]) for r in runs)


def test_gradcheck_and_opcheck(rng):
    x = as_tensor(rng.standard_normal((2, 8, 6, 7)), torch.float64).requires_grad_()
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14, min_size=2.0), torch.float64)
    assert torch.autograd.gradcheck(lambda t: roiops.ps_roi_align(t, rois, 2, 0.5, 2), (x,))
    torch.library.opcheck(torch.ops.roiops.ps_roi_align, (x, rois, 0.5, 2, 2, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computed_in_float32(rng, dtype):
    x = as_tensor(rng.standard_normal((1, 8, 6, 6)), dtype).requires_grad_()
    rois = as_tensor(random_rois(rng, 1, 4, 12, 12, min_size=2.0), torch.float32)
    out = roiops.ps_roi_align(x, rois, 2, 0.5, 2)
    ref = roiops.ps_roi_align(x.detach().float(), rois, 2, 0.5, 2)
    assert out.dtype == dtype
    assert torch.equal(out, ref.to(dtype))
    out.sum().backward()
    assert x.grad.dtype == dtype


def test_bad_arguments():
    x = torch.randn(1, 10, 6, 6)
    with pytest.raises(ValueError, match=r"10 channels, not a multiple of the output area 2 x 2"):
        roiops.ps_roi_align(x, torch.tensor([[0, 0.0, 0, 4, 4]]), 2)
    with pytest.raises(ValueError, match="batch indices must lie"):
        roiops.ps_roi_align(x[:, :8], torch.tensor([[3, 0.0, 0, 4, 4]]), 2)
    with pytest.raises(TypeError, match="sampling_ratio must be an integer"):
        roiops.ps_roi_align(x[:, :8], torch.tensor([[0, 0.0, 0, 4, 4]]), 2, 1.0, 1.5)


def test_empty_boxes_and_list_boxes(rng):
    x = torch.randn(2, 8, 6, 6)
    assert roiops.ps_roi_align(x, torch.zeros(0, 5), 2).shape == (0, 2, 2, 2)
    boxes = [torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[1.0, 1, 5, 5]])]
    rois = torch.tensor([[0, 0.0, 0, 4, 4], [1, 1.0, 1, 5, 5]])
    assert torch.equal(roiops.ps_roi_align(x, boxes, 2), roiops.ps_roi_align(x, rois, 2))


def test_module_matches_torchvision_s():
    ours, theirs = roiops.PSRoIAlign(3, 0.25, 2), torchvision.ops.PSRoIAlign(3, 0.25, 2)
    assert repr(ours) == repr(theirs)
    x = torch.randn(1, 18, 8, 8)
    rois = torch.tensor([[0, 2.0, 2, 20, 24]])
    assert torch.equal(ours(x, rois), theirs(x, rois))


def test_torch_compile_fullgraph(rng):
    x = as_tensor(rng.standard_normal((2, 8, 6, 7)), torch.float32).requires_grad_()
    rois = as_tensor(random_rois(rng, 2, 5, 12, 14, min_size=2.0), torch.float32)

    def f(t):
        return roiops.ps_roi_align(t, rois, 2, 0.5, 2).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    (g_compiled,) = torch.autograd.grad(compiled(x), x)
    (g_eager,) = torch.autograd.grad(f(x), x)
    assert torch.equal(g_compiled, g_eager)
