"""Deformable RoI pooling (mmcv's DeformRoIPool and its Packs): the Numba kernels against
the reference, the reference against mmcv's stored numbers and a pencil-checkable shift,
gradients against finite differences and against mmcv's offset gradient where it is
the forward's derivative."""

import numpy as np
import pytest
import torch
from conftest import as_tensor, random_rois, results_across_thread_counts
from hypothesis import given
from hypothesis import strategies as st
from torch.library import opcheck

import roiops
from roiops.reference import deform_roi_pool as reference
from roiops.reference.roi_align import bilinear_weights, geometries, sample_coordinate

# mmcv's tests/test_ops/test_deform_roi_pool.py: DeformRoIPoolPack((2, 2), C,
# spatial_scale=1, sampling_ratio=2) at its initial (zero) offsets; outputs and the input
# gradient of a backward from ones
MMCV_CASES = [
    ([[[[1.0, 2.0], [3.0, 4.0]]]], [[0.0, 0.0, 0.0, 1.0, 1.0]],
     [[[[1, 1.25], [1.5, 1.75]]]], [[[[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    ([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 3.0], [2.0, 1.0]]]], [[0.0, 0.0, 0.0, 1.0, 1.0]],
     [[[[1.0, 1.25], [1.5, 1.75]], [[4, 3.75], [3.5, 3.25]]]],
     [[[[3.0625, 0.4375], [0.4375, 0.0625]], [[3.0625, 0.4375], [0.4375, 0.0625]]]]),
    ([[[[1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0], [9.0, 10.0, 13.0, 14.0],
        [11.0, 12.0, 15.0, 16.0]]]], [[0.0, 0.0, 0.0, 3.0, 3.0]],
     [[[[1.9375, 4.75], [7.5625, 10.375]]]],
     [[[[0.47265625, 0.4296875, 0.4296875, 0.04296875],
        [0.4296875, 0.390625, 0.390625, 0.0390625],
        [0.4296875, 0.390625, 0.390625, 0.0390625],
        [0.04296875, 0.0390625, 0.0390625, 0.00390625]]]]),
]  # fmt: skip


def case(rng, dtype=torch.float32, k=10, channels=5, size=(2, 3), scale=0.5):
    """(x [2, C, 11, 13], rois [k, 5] some beyond the map and some degenerate, offsets
    [k, 2, *size] moving bins by up to about a RoI, output gradient)."""
    x = as_tensor(rng.standard_normal((2, channels, 11, 13)), dtype)
    rois = as_tensor(random_rois(rng, 2, k, 22, 26), dtype)
    offset = as_tensor(rng.standard_normal((k, 2, *size)) * 3, dtype)
    grad = as_tensor(rng.standard_normal((k, channels, *size)), dtype)
    return x, rois, offset, grad


def run(backend, x, rois, offset, grad, size, scale, ratio, gamma=0.1):
    """(output, input gradient, offset gradient) on ``backend``."""
    xb = x.detach().clone().requires_grad_()
    ob = offset.detach().clone().requires_grad_()
    with roiops.use_backend(backend):
        out = roiops.deform_roi_pool(xb, rois, ob, size, scale, ratio, gamma)
        out.backward(grad)
    return out.detach(), xb.grad, ob.grad


@pytest.mark.parametrize("index", range(len(MMCV_CASES)))
@pytest.mark.parametrize("zero_offset", [False, True])
def test_mmcv_stored_values(index, zero_offset):
    features, rois, expected, expected_grad = MMCV_CASES[index]
    x = torch.tensor(features, requires_grad=True)
    rois = torch.tensor(rois)
    if zero_offset:  # the deformable kernels, not roi_align
        out = roiops.deform_roi_pool(x, rois, torch.zeros(1, 2, 2, 2), 2, 1.0, 2)
    else:
        out = roiops.mmcv.DeformRoIPoolPack((2, 2), x.shape[1], spatial_scale=1.0,
                                            sampling_ratio=2)(x, rois)  # fmt: skip
    out.backward(torch.ones_like(out))
    assert torch.equal(out, torch.tensor(expected))
    assert torch.equal(x.grad, torch.tensor(expected_grad))


def test_a_whole_cell_shift_is_roi_align_of_the_shifted_box():
    # a 4x4-cell box, every bin moved one cell right and two down (gamma * 4 * 0.25 = 1,
    # gamma * 4 * 0.5 = 2, exact): roi_align(aligned=True) of the box moved so, bit for bit
    x = torch.arange(100.0).reshape(1, 1, 10, 10)
    rois = torch.tensor([[0.0, 1, 2, 5, 6]])
    offset = torch.tensor([0.25, 0.5]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    out = roiops.deform_roi_pool(x, rois, offset, 2, 1.0, 2, gamma=1.0)
    moved = roiops.roi_align(x, torch.tensor([[0.0, 2, 4, 6, 8]]), 2, 1.0, 2, aligned=True)
    assert torch.equal(out, moved)
    # on a ramp of 10 a row and 1 a column the shift adds 2 * 10 + 1
    assert torch.equal(
        out - roiops.deform_roi_pool(x, rois, None, 2, 1.0, 2), torch.full_like(out, 21)
    )


def test_one_bin_moves_alone():
    x = torch.arange(100.0).reshape(1, 1, 10, 10)
    rois = torch.tensor([[0.0, 1, 2, 5, 6]])
    offset = torch.zeros(1, 2, 2, 2)
    offset[0, 0, 1, 0] = -0.25  # bin (1, 0): one cell left
    out = roiops.deform_roi_pool(x, rois, offset, 2, 1.0, 2, gamma=1.0)
    still = roiops.deform_roi_pool(x, rois, None, 2, 1.0, 2)
    assert torch.equal(out - still, torch.tensor([[[[0.0, 0], [-1, 0]]]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ratio,size,scale,gamma", [(2, (2, 3), 0.5, 0.1), (0, 3, 0.5, 0.3),
                                                     (1, (3, 2), 1.0, 0.05)])  # fmt: skip
def test_numba_matches_reference_bit_for_bit(rng, dtype, ratio, size, scale, gamma):
    pair = (size, size) if isinstance(size, int) else size
    x, rois, offset, grad = case(rng, dtype, size=pair)
    offset[3, 1, 0, 1] = float("nan")
    offset[4, 0, 1, 0] = float("inf")
    fast = run("numba", x, rois, offset, grad, size, scale, ratio, gamma)
    ref = run("reference", x, rois, offset, grad, size, scale, ratio, gamma)
    for a, b in zip(fast, ref, strict=True):
        assert torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    assert torch.isnan(fast[0][3, :, 0, 1]).all() and torch.isnan(fast[0][4, :, 1, 0]).all()


@given(
    n=st.integers(1, 3),
    c=st.integers(1, 12),
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    k=st.integers(0, 6),
    oh=st.integers(1, 3),
    ow=st.integers(1, 3),
    ratio=st.integers(-1, 3),
    scale=st.sampled_from([1.0, 0.5, 1 / 3]),
    gamma=st.sampled_from([0.1, 1.0, -0.25]),
    spread=st.sampled_from([0.0, 0.5, 5.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_numba_equals_reference(n, c, h, w, k, oh, ow, ratio, scale, gamma, spread,
                                         seed):  # fmt: skip
    # any map, box and offset (moves up to several RoIs, off the map): every bit
    rng = np.random.default_rng(seed)
    x = as_tensor(rng.standard_normal((n, c, h, w)), torch.float32)
    rois = as_tensor(random_rois(rng, n, k, h / scale, w / scale), torch.float32)
    offset = as_tensor(rng.standard_normal((k, 2, oh, ow)) * spread, torch.float32)
    grad = as_tensor(rng.standard_normal((k, c, oh, ow)), torch.float32)
    fast = run("numba", x, rois, offset, grad, (oh, ow), scale, ratio, gamma)
    ref = run("reference", x, rois, offset, grad, (oh, ow), scale, ratio, gamma)
    for a, b in zip(fast, ref, strict=True):
        assert torch.equal(a, b)


def test_zero_offset_is_roi_align_aligned(rng):
    x, rois, offset, grad = case(rng)
    for ratio in (0, 2):
        shifted = run("numba", x, rois, torch.zeros_like(offset), grad, (2, 3), 0.5, ratio)
        xb = x.clone().requires_grad_()
        plain = roiops.roi_align(xb, rois, (2, 3), 0.5, ratio, aligned=True)
        plain.backward(grad)
        assert torch.equal(shifted[0], plain) and torch.equal(shifted[1], xb.grad)
        assert torch.equal(roiops.deform_roi_pool(x, rois, None, (2, 3), 0.5, ratio), plain)


def test_a_bin_with_a_non_finite_offset_is_nan_and_sends_no_gradient(rng):
    x, rois, offset, grad = case(rng, torch.float64, k=3)
    offset[1, 0, 1, 2] = float("nan")
    out, gx, go = run("numba", x, rois, offset, grad, (2, 3), 0.5, 2)
    assert torch.isnan(out[1, :, 1, 2]).all() and torch.isnan(out).sum() == x.shape[1]
    quiet = grad.clone()
    quiet[1, :, 1, 2] = 0
    _, gx_quiet, go_quiet = run("numba", x, rois, offset.nan_to_num(0.0), quiet, (2, 3), 0.5, 2)
    assert torch.equal(gx, gx_quiet)
    assert go[1, :, 1, 2].eq(0).all() and torch.equal(go[0], go_quiet[0])


def test_backward_deterministic_across_thread_counts(rng):
    x, rois, offset, grad = case(rng, k=40, channels=33)
    runs = results_across_thread_counts(
        lambda: run("numba", x, rois, offset, grad, (2, 3), 0.5, 0)[1:]
    )
    for gx, go in runs[1:]:
        assert torch.equal(gx, runs[0][0]) and torch.equal(go, runs[0][1])


@pytest.mark.parametrize("ratio", [2, 0])
def test_gradcheck(rng, ratio):
    # boxes inside and across the map's border (the clamped bands), offsets of any sign
    x, rois, offset, _ = case(rng, torch.float64, k=4, channels=2)
    x.requires_grad_()
    offset.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, o: roiops.deform_roi_pool(a, rois, o, (2, 3), 0.5, ratio, 0.2), (x, offset)
    )


def mmcv_offset_gradient(grad, x, rois, offset, scale, pooled, ratio, gamma):
    """mmcv's CUDA kernel's offset gradient, written out (``ogx``, ``ogy``: the slope of
    the bilinear interpolant at the unclamped point), in float64."""
    out = np.zeros(offset.shape)
    _, channels, height, width = x.shape
    for k, n, g in geometries(rois, scale, *pooled, ratio, True, np.float64):
        for c in range(channels):
            for ph in range(pooled[0]):
                for pw in range(pooled[1]):
                    start = reference.bin_start(g, offset[k], ph, pw, gamma, np.float64)
                    share = grad[k, c, ph, pw] / g.count
                    for iy in range(g.grid_h):
                        y = sample_coordinate(start[0], g.bin_size_h, ph, iy, g.grid_h)
                        for ix in range(g.grid_w):
                            x_ = sample_coordinate(start[1], g.bin_size_w, pw, ix, g.grid_w)
                            bw = bilinear_weights(y, x_, height, width)
                            if bw is None:
                                continue
                            v = x[n, c]
                            v00, v10 = v[bw.y_low, bw.x_low], v[bw.y_low, bw.x_high]
                            v01, v11 = v[bw.y_high, bw.x_low], v[bw.y_high, bw.x_high]
                            yl, yh, xl, xh = bw.y_low, bw.y_high, bw.x_low, bw.x_high
                            out[k, 0, ph, pw] += (
                                gamma
                                * g.width
                                * share
                                * (
                                    v11 * (y - yl)
                                    + v10 * (yh - y)
                                    + v01 * (yl - y)
                                    + v00 * (y - yh)
                                )
                            )
                            out[k, 1, ph, pw] += (
                                gamma
                                * g.height
                                * share
                                * (
                                    v11 * (x_ - xl)
                                    + v01 * (xh - x_)
                                    + v10 * (xl - x_)
                                    + v00 * (x_ - xh)
                                )
                            )
    return out


def test_offset_gradient_is_mmcv_s_inside_the_map(rng):
    # boxes and shifts that keep every point off the border bands: mmcv's formula is the
    # derivative there, and equals roiops' to rounding
    x = rng.standard_normal((2, 3, 20, 24))
    x1, y1 = rng.uniform(8, 16, 6), rng.uniform(8, 12, 6)
    rois = np.stack([rng.integers(0, 2, 6), x1, y1, x1 + rng.uniform(4, 12, 6),
                     y1 + rng.uniform(4, 12, 6)], axis=1)  # fmt: skip
    offset = rng.uniform(-0.5, 0.5, (6, 2, 3, 3))
    grad = rng.standard_normal((6, 3, 3, 3))
    ours = run("numba", torch.from_numpy(x), torch.from_numpy(rois), torch.from_numpy(offset),
               torch.from_numpy(grad), 3, 0.5, 2)[2]  # fmt: skip
    mmcv = mmcv_offset_gradient(grad, x, rois, offset, 0.5, (3, 3), 2, 0.1)
    assert np.abs(mmcv).max() > 0.1
    np.testing.assert_allclose(ours.numpy(), mmcv, rtol=1e-10, atol=1e-12)


def test_offset_gradient_where_mmcv_s_is_not_the_derivative():
    # one point in the last column (x clamped to W - 1), one in the band before the first
    # (x in (-1, 0), clamped to 0): the value does not move with x there, with y it does.
    # roiops gives the derivative (x: 0, y: the column's slope); mmcv's kernel takes the
    # cell's slopes as if the point were not clamped: 0 for y in the last column (its
    # cell has one column), not 0 for x before the first
    x = torch.arange(12.0, dtype=torch.float64).reshape(1, 1, 3, 4)
    rois = torch.tensor([[0.0, 3.6, 0.5, 4.0, 2.0], [0.0, -0.3, 0.5, 0.1, 2.0]]).double()
    offset = torch.zeros(2, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    out = roiops.deform_roi_pool(x, rois, offset, 1, 1.0, 1)
    out.backward(torch.ones_like(out))
    g = offset.grad.view(2, 2)
    # gamma * roi_height (1.5) * the column's slope (4 a row)
    torch.testing.assert_close(g, torch.tensor([[0.0, 0.6], [0.0, 0.6]], dtype=torch.float64))
    assert g[:, 0].eq(0).all()
    mmcv = mmcv_offset_gradient(np.ones((2, 1, 1, 1)), x.numpy(), rois.numpy(),
                                np.zeros((2, 2, 1, 1)), 1.0, (1, 1), 1, 0.1)  # fmt: skip
    assert mmcv[0, 1, 0, 0] == 0 and mmcv[1, 0, 0, 0] != 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(rng, dtype):
    x, rois, offset, grad = case(rng)
    half = run("numba", x.to(dtype), rois, offset, grad.to(dtype), (2, 3), 0.5, 2)
    full = run("numba", x.to(dtype).float(), rois, offset, grad.to(dtype).float(), (2, 3), 0.5, 2)
    assert half[0].dtype == dtype and half[1].dtype == dtype and half[2].dtype == torch.float32
    assert torch.equal(half[0], full[0].to(dtype))
    assert torch.equal(half[1], full[1].to(dtype))
    assert torch.equal(half[2], full[2])


def test_empty_inputs():
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    offset = torch.zeros(0, 2, 2, 2, requires_grad=True)
    out = roiops.deform_roi_pool(x, torch.zeros(0, 5), offset, 2)
    assert out.shape == (0, 3, 2, 2)
    out.sum().backward()
    assert x.grad.eq(0).all() and offset.grad.shape == (0, 2, 2, 2)


def test_list_boxes_and_opcheck(rng):
    x, rois, offset, _ = case(rng, k=4)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.cat([torch.nonzero(rois[:, 0] == i)[:, 0] for i in range(2)])
    out = roiops.deform_roi_pool(x, boxes, offset[order], (2, 3), 0.5, 2)
    assert torch.equal(out, roiops.deform_roi_pool(x, rois, offset, (2, 3), 0.5, 2)[order])
    args = (x.requires_grad_(), rois, offset.requires_grad_(), 0.5, 2, 3, 2, 0.1)
    opcheck(torch.ops.roiops.deform_roi_pool.default, args)


def test_bad_arguments():
    x = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0.0, 1, 1, 5, 5]])
    with pytest.raises(
        ValueError, match=r"offset must have shape \[K, 2, PH, PW\] = \[1, 2, 2, 2\]"
    ):
        roiops.deform_roi_pool(x, rois, torch.zeros(1, 2, 3, 3), 2)
    with pytest.raises(TypeError, match="offset must be a Tensor or None"):
        roiops.deform_roi_pool(x, rois, [[0.0]], 2)
    with pytest.raises(TypeError, match="offset must be a floating point tensor"):
        roiops.deform_roi_pool(x, rois, torch.zeros(1, 2, 2, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="offset is on meta but input is on cpu"):
        roiops.deform_roi_pool(x, rois, torch.zeros(1, 2, 2, 2, device="meta"), 2)
    with pytest.raises(ValueError, match="gamma must be finite"):
        roiops.deform_roi_pool(x, rois, torch.zeros(1, 2, 2, 2), 2, gamma=float("nan"))
    with pytest.raises(TypeError, match="gamma must be a real number"):
        roiops.deform_roi_pool(x, rois, None, 2, gamma="0.1")
    with pytest.raises(ValueError, match="NaN or infinite"):
        roiops.deform_roi_pool(x, rois * float("nan"), torch.zeros(1, 2, 2, 2), 2)
    with pytest.raises(ValueError, match="input has 2 channels, the layer was built for"):
        roiops.DeformRoIPoolPack(2, 3, 8)(x, rois)
    with pytest.raises(ValueError, match="output_size must be positive"):
        roiops.DeformRoIPoolPack(0, 2, 8)


def test_packs_compose_mmcv_s_layers(rng):
    torch.manual_seed(0)
    x, rois, _, _ = case(rng, k=6, channels=4)
    pack = roiops.ModulatedDeformRoIPoolPack((2, 3), 4, 16, 0.5, 2)
    for fc in (pack.offset_fc[-1], pack.mask_fc[2]):  # (trained layers are not zero)
        torch.nn.init.normal_(fc.weight, std=0.5)
    plain = roiops.roi_align(x, rois, (2, 3), 0.5, 2, aligned=True).flatten(1)
    offset = pack.offset_fc(plain).view(6, 2, 2, 3)
    mask = pack.mask_fc(plain).view(6, 1, 2, 3)
    expected = roiops.deform_roi_pool(x, rois, offset, (2, 3), 0.5, 2) * mask
    assert torch.equal(pack(x, rois), expected)
    assert offset.abs().max() > 0.1 and not torch.equal(expected, plain.view(6, 4, 2, 3) * mask)
    out = pack(x.requires_grad_(), rois)
    out.sum().backward()
    assert pack.offset_fc[0].weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    names = {name for name, _ in pack.named_parameters()}
    assert names == {f"offset_fc.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")} | {
        f"mask_fc.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }


def test_modulated_pack_under_torch_compile(rng):
    # (``test_integration.EveryOp`` compiles DeformRoIPoolPack and checks every bit; here
    # the mask's sigmoid, whose backward inductor fuses in another order than eager)
    torch.manual_seed(0)
    x, rois, _, _ = case(rng, k=6, channels=4)
    pack = roiops.ModulatedDeformRoIPoolPack((2, 3), 4, 16, 0.5, 0)
    torch.nn.init.normal_(pack.offset_fc[-1].weight, std=0.5)
    compiled = torch.compile(pack, fullgraph=True)
    grads = []
    for module in (compiled, pack):
        xb = x.clone().requires_grad_()
        out = module(xb, rois)
        grads.append((out, torch.autograd.grad(out.square().sum(), xb)[0]))
    assert torch.equal(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
