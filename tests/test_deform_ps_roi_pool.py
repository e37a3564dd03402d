"""Deformable position-sensitive RoI pooling (Deformable ConvNets' own, mmdetection 1.x's
and DCNv2's): the reference against the original kernel written out and pencil cases,
the Numba kernels against the reference bit for bit, gradients against finite
differences."""

import numpy as np
import pytest
import torch
from conftest import as_tensor, random_rois, results_across_thread_counts
from hypothesis import given
from hypothesis import strategies as st
from torch.library import opcheck

import roiops
from roiops.bench import dcn_deform_ps_roi_pool
from roiops.reference import deform_ps_roi_pool as reference

# (group_size, classes of offsets (0: none), output size, part_size, sample_per_part):
# plain deformable pooling (mmdetection 1.x's dpool, DCNv2's DCNPooling), R-FCN's
# position-sensitive maps, class-wise offsets, coarser parts, no offsets
CONFIGS = [(1, 1, 3, 3, 2), (3, 1, 3, 3, 3), (1, 2, 3, 2, 2), (2, 0, 4, 2, 1), (1, 1, 6, 6, 4)]


def case(rng, dtype, group, classes, pooled, part, k=8, per_group=4):
    """(x [2, per_group * group**2, 11, 13], rois [k, 5] some past the map and some
    degenerate, offsets moving bins by up to about a RoI (None without classes))."""
    x = as_tensor(rng.standard_normal((2, per_group * group * group, 11, 13)), dtype)
    rois = as_tensor(random_rois(rng, 2, k, 22, 26), dtype)
    offset = None
    if classes:
        offset = as_tensor(rng.standard_normal((k, 2 * classes, part, part)) * 2, dtype)
    return x, rois, offset


def run(backend, x, rois, offset, pooled, group, part, samples, scale=0.5, trans_std=0.3,
        fn=roiops.deform_ps_roi_pool):  # fmt: skip
    """(output, input gradient[, offset gradient]) on ``backend`` for a fixed output
    gradient."""
    xb = x.detach().clone().requires_grad_()
    leaves = [xb]
    ob = None
    if offset is not None:
        ob = offset.detach().clone().requires_grad_()
        leaves.append(ob)
    with roiops.use_backend(backend):
        if fn is roiops.deform_ps_roi_pool:
            out = fn(xb, rois, ob, pooled, scale, group, part, samples, trans_std)
        else:
            out = fn(xb, rois, ob, scale, pooled, group, part, samples, trans_std)
        g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads = torch.autograd.grad(out, leaves, g)
    return out.detach(), *grads


@pytest.mark.parametrize("config", CONFIGS)
def test_reference_is_the_original_kernel(rng, config):
    # the original written out in torch (every sample at once, autograd for the
    # gradients): 1e-12 in float64, forward, input and offset gradients
    group, classes, pooled, part, samples = config
    x, rois, offset = case(rng, torch.float64, group, classes, pooled, part)
    ours = run("reference", x, rois, offset, pooled, group, part, samples)
    theirs = run("reference", x, rois, offset, pooled, group, part, samples,
                 fn=dcn_deform_ps_roi_pool)  # fmt: skip
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", CONFIGS)
def test_float32_agrees_with_the_original_in_float32(rng, config):
    group, classes, pooled, part, samples = config
    x, rois, offset = case(rng, torch.float32, group, classes, pooled, part)
    ours = run("numba", x, rois, offset, pooled, group, part, samples)
    theirs = run("reference", x, rois, offset, pooled, group, part, samples,
                 fn=dcn_deform_ps_roi_pool)  # fmt: skip
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS)
def test_numba_matches_reference_bit_for_bit(rng, dtype, config):
    group, classes, pooled, part, samples = config
    x, rois, offset = case(rng, dtype, group, classes, pooled, part)
    fast = run("numba", x, rois, offset, pooled, group, part, samples)
    ref = run("reference", x, rois, offset, pooled, group, part, samples)
    for a, b in zip(fast, ref, strict=True):
        assert torch.equal(a, b)


@given(
    n=st.integers(1, 2),
    group=st.integers(1, 3),
    classes=st.integers(0, 2),
    per_class=st.integers(1, 3),
    h=st.integers(1, 7),
    w=st.integers(1, 7),
    k=st.integers(0, 5),
    pooled=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    part=st.integers(1, 4),
    samples=st.integers(1, 4),
    scale=st.sampled_from([1.0, 0.5, 1 / 3, 2.0]),
    trans_std=st.sampled_from([0.0, 0.1, 1.0]),
    spread=st.sampled_from([0.0, 1.0, 5.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_numba_equals_reference(n, group, classes, per_class, h, w, k, pooled, part,
                                         samples, scale, trans_std, spread, seed):  # fmt: skip
    # any map, box (past the map, inverted), grouping, classes, parts and offset (moves up
    # to several RoIs, off the map): every bit, forward and both gradients
    rng = np.random.default_rng(seed)
    channels = per_class * max(classes, 1) * group * group
    x = as_tensor(rng.standard_normal((n, channels, h, w)), torch.float32)
    rois = as_tensor(random_rois(rng, n, k, h / scale, w / scale), torch.float32)
    offset = None
    if classes:
        offset = as_tensor(rng.standard_normal((k, 2 * classes, part, part)) * spread,
                           torch.float32)  # fmt: skip
    args = (x, rois, offset, pooled, group, part, samples, scale, trans_std)
    for a, b in zip(run("numba", *args), run("reference", *args), strict=True):
        assert torch.equal(a, b)


def test_pencil_values():
    # x[y, x] = 10 y + x, bilinear of a plane is exact. Box (1, 1, 2, 2) at scale 1: cells
    # 0.5 to 2.5 (rounded corners, the end a pixel further, half a cell back); one bin of
    # 2 x 2 samples at 0.5 and 1.5 (the first at the bin's corner): mean 11
    x = (10 * torch.arange(4.0)[:, None] + torch.arange(4.0)).reshape(1, 1, 4, 4)
    box = torch.tensor([[0, 1.0, 1.0, 2.0, 2.0]])
    assert roiops.deform_ps_roi_pool(x, box, None, 1, 1.0, sample_per_part=2).item() == 11
    # (corners rounded half away from zero first: 0.5 -> 1, 2.4 -> 2, the same box)
    halves = torch.tensor([[0, 0.5, 0.5, 2.4, 2.4]])
    assert roiops.deform_ps_roi_pool(x, halves, None, 1, 1.0, sample_per_part=2).item() == 11
    # 2 x 2 bins of one sample each, at their corners (0.5 or 1.5 an axis)
    out = roiops.deform_ps_roi_pool(x, box, None, 2, 1.0, sample_per_part=1)
    assert out.flatten().tolist() == [5.5, 6.5, 15.5, 16.5]
    # one part, moved by trans_std * offset * roi size: 0.5 * 0.5 * 2 = 0.5 cells right,
    # 0.5 * 1 * 2 = 1 cell down
    offset = torch.tensor([[[[0.5]], [[1.0]]]])
    out = roiops.deform_ps_roi_pool(x, box, offset, 2, 1.0, 1, 1, 1, trans_std=0.5)
    assert out.flatten().tolist() == [16.0, 17.0, 26.0, 27.0]
    # a sample more than half a cell past the map is left out, the others averaged: box
    # (-2, 1, 0, 1) spans columns -2.5 to 0.5 and rows 0.5 to 1.5; at 3 samples a bin,
    # columns -2.5, -1.5 (left out) and -0.5 (kept, clamped to 0), rows 0.5, 5/6, 7/6
    left = torch.tensor([[0, -2.0, 1.0, 0.0, 1.0]])
    out = roiops.deform_ps_roi_pool(x, left, None, 1, 1.0, sample_per_part=3)
    torch.testing.assert_close(out.flatten(), torch.tensor([10 * 5 / 6]))
    # a bin with no sample within the map is 0
    away = torch.tensor([[0, 10.0, 10.0, 12.0, 12.0]])
    assert roiops.deform_ps_roi_pool(x, away, None, 1, 1.0).item() == 0


def test_position_sensitive_channels():
    # group_size 2, 2 x 2 bins: bin (ph, pw) of output channel c reads input channel
    # (c * 2 + ph) * 2 + pw; maps constant per channel give the channel index
    x = torch.arange(8.0)[None, :, None, None].expand(1, 8, 6, 6).contiguous()
    out = roiops.deform_ps_roi_pool(x, torch.tensor([[0, 1.0, 1, 4, 4]]), None, 2, 1.0, 2)
    assert out.shape == (1, 2, 2, 2)
    assert out.flatten().tolist() == list(range(8))


def test_part_index_is_divided_in_the_dtype():
    # floor(13 / 22 * 22): 13/22 rounds down in float32 and the product stays below 13
    # (part 12); in float64 it is 13, as exactly
    assert reference.part_index(13, 22, 22, np.float32) == 12
    assert reference.part_index(13, 22, 22, np.float64) == 13
    # so in float32 bins 12 and 13 move with part 12's offset, as in the original kernel
    box = torch.tensor([[0, 0.0, 0, 43, 43]])
    for dtype, moved_bins in ((torch.float32, 4), (torch.float64, 1)):
        x = torch.randn(1, 1, 44, 44, dtype=dtype)
        offset = torch.zeros(1, 2, 22, 22, dtype=dtype)
        offset[0, :, 12, 12] = 1.0
        for backend in ("numba", "reference"):
            with roiops.use_backend(backend):
                still = roiops.deform_ps_roi_pool(x, box, offset * 0, 22, 1.0, trans_std=0.01)
                moved = roiops.deform_ps_roi_pool(x, box, offset, 22, 1.0, trans_std=0.01)
            changed = (moved != still)[0, 0]
            assert changed[12, 12] and changed.sum() == moved_bins
            assert changed[12:14, 12:14].sum() == moved_bins


def test_a_bin_with_a_non_finite_offset_is_nan_and_sends_no_gradient(rng):
    x, rois, offset = case(rng, torch.float64, 1, 1, 3, 3, k=3)
    offset[1, 1, 2, 0] = float("inf")
    out, gx, go = run("numba", x, rois, offset, 3, 1, 3, 2)
    assert torch.isnan(out[1, :, 2, 0]).all() and torch.isnan(out).sum() == x.shape[1]
    quiet = offset.clone()
    quiet[1, 1, 2, 0] = 0
    xb = x.clone().requires_grad_()
    ob = quiet.clone().requires_grad_()
    ref = roiops.deform_ps_roi_pool(xb, rois, ob, 3, 0.5, 1, 3, 2, 0.3)
    g = torch.linspace(-1, 1, ref.numel(), dtype=ref.dtype).reshape(ref.shape)
    g[1, :, 2, 0] = 0
    ref_gx, ref_go = torch.autograd.grad(ref, [xb, ob], g)
    assert torch.equal(gx, ref_gx)
    assert go[1, :, 2, 0].eq(0).all() and torch.equal(go[0], ref_go[0])


def test_backward_deterministic_across_thread_counts(rng):
    x, rois, offset = case(rng, torch.float32, 1, 1, 3, 3, k=40, per_group=33)
    runs = results_across_thread_counts(lambda: run("numba", x, rois, offset, 3, 1, 3, 2)[1:])
    for gx, go in runs[1:]:
        assert torch.equal(gx, runs[0][0]) and torch.equal(go, runs[0][1])


def test_gradcheck(rng):
    # inputs and offsets (samples off whole cells: the surface is smooth there)
    x, rois, offset = case(rng, torch.float64, 2, 2, 2, 2, k=3, per_group=2)
    x.requires_grad_()
    offset = (offset * 0.37 + 0.013).requires_grad_()

    def f(x, offset):
        return roiops.deform_ps_roi_pool(x, rois, offset, 2, 0.5, 2, 2, 3, 0.3)

    assert torch.autograd.gradcheck(f, (x, offset), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(rng, dtype):
    x, rois, offset = case(rng, torch.float32, 1, 1, 3, 3)
    out = roiops.deform_ps_roi_pool(x.to(dtype), rois, offset, 3, 0.5, trans_std=0.1)
    ref = roiops.deform_ps_roi_pool(x.to(dtype).float(), rois, offset, 3, 0.5, trans_std=0.1)
    assert out.dtype == dtype and torch.equal(out, ref.to(dtype))


def test_empty_inputs():
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    offset = torch.zeros(0, 2, 2, 2, requires_grad=True)
    out = roiops.deform_ps_roi_pool(x, torch.zeros(0, 5), offset, 2, group_size=2)
    assert out.shape == (0, 1, 2, 2)
    out.sum().backward()
    assert x.grad.eq(0).all() and offset.grad.shape == (0, 2, 2, 2)
    flat = torch.randn(1, 4, 0, 8)
    assert roiops.deform_ps_roi_pool(flat, torch.tensor([[0, 1.0, 1, 3, 3]]), None, 2).eq(0).all()


def test_list_boxes_and_opcheck(rng):
    x, rois, offset = case(rng, torch.float32, 1, 1, 3, 3, k=4)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.cat([torch.nonzero(rois[:, 0] == i)[:, 0] for i in range(2)])
    out = roiops.deform_ps_roi_pool(x, boxes, offset[order], 3, 0.5, trans_std=0.1)
    full = roiops.deform_ps_roi_pool(x, rois, offset, 3, 0.5, trans_std=0.1)
    assert torch.equal(out, full[order])
    args = (x.requires_grad_(), rois, offset.requires_grad_(), 0.5, 3, 3, 2, 1, 3, 0.1)
    opcheck(torch.ops.roiops.deform_ps_roi_pool.default, args)


def test_bad_arguments():
    x = torch.randn(1, 8, 8, 8)
    rois = torch.tensor([[0.0, 1, 1, 5, 5]])
    op = roiops.deform_ps_roi_pool
    with pytest.raises(ValueError, match="not a multiple of group_size\\*\\*2 = 9"):
        op(x, rois, None, 3, group_size=3)
    with pytest.raises(ValueError, match=r"offset must have shape \[K, 2 \* classes, part_size"):
        op(x, rois, torch.zeros(1, 2, 3, 3), 2)
    with pytest.raises(ValueError, match=r"offset must have shape"):
        op(x, rois, torch.zeros(1, 3, 2, 2), 2)
    with pytest.raises(ValueError, match="3 classes .* do not split the 8 output channels"):
        op(x, rois, torch.zeros(1, 6, 2, 2), 2)
    with pytest.raises(ValueError, match="part_size must be given for an output that is not"):
        op(x, rois, None, (2, 3))
    with pytest.raises(ValueError, match="sample_per_part must be at least 1"):
        op(x, rois, None, 2, sample_per_part=0)
    with pytest.raises(TypeError, match="group_size must be an integer"):
        op(x, rois, None, 2, group_size=1.0)
    with pytest.raises(ValueError, match="trans_std must be finite"):
        op(x, rois, None, 2, trans_std=float("inf"))
    with pytest.raises(TypeError, match="offset must be a floating point tensor"):
        op(x, rois, torch.zeros(1, 2, 2, 2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="offset is on meta but input is on cpu"):
        op(x, rois, torch.zeros(1, 2, 2, 2, device="meta"), 2)
    with pytest.raises(TypeError, match="offset must be a Tensor or None"):
        op(x, rois, [[0.0]], 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        op(x, torch.tensor([[0.0, float("nan"), 1, 5, 5]]), None, 2)
    with pytest.raises(ValueError, match="batch indices must lie"):
        op(x, torch.tensor([[1.0, 1, 1, 5, 5]]), None, 2)


def test_layers_compose_the_originals_heads(rng):
    # mmdetection 1.x's Packs and DCNv2's DCNPooling: the pooling without offsets, the
    # fully connected heads (parameters named as theirs: their checkpoints load), then
    # the deformable pooling (times the mask), written out
    from roiops import dcn

    x, rois, _ = case(rng, torch.float32, 1, 1, 3, 3, per_group=4)
    pack = dcn.DeformRoIPoolingPack(0.5, 3, 4, False, trans_std=0.1, deform_fc_channels=16)
    modulated = dcn.ModulatedDeformRoIPoolingPack(0.5, 3, 4, False, trans_std=0.1,
                                                  deform_fc_channels=16)  # fmt: skip
    dcnv2 = dcn.DCNPooling(0.5, 3, 4, False, trans_std=0.1, deform_fc_dim=16)
    assert [k for k in modulated.state_dict() if k.startswith("mask_fc")] == [
        "mask_fc.0.weight", "mask_fc.0.bias", "mask_fc.2.weight", "mask_fc.2.bias"]  # fmt: skip
    assert list(pack.state_dict()) == [f"offset_fc.{i}.{p}" for i in (0, 2, 4)
                                       for p in ("weight", "bias")]  # fmt: skip
    assert list(dcnv2.state_dict()) == [f"offset_mask_fc.{i}.{p}" for i in (0, 2, 4)
                                        for p in ("weight", "bias")]  # fmt: skip
    plain = roiops.deform_ps_roi_pool(x, rois, None, 3, 0.5, trans_std=0.1)
    # the last layers start at zero: no move, a mask of 0.5
    assert torch.equal(pack(x, rois), plain)
    assert torch.equal(modulated(x, rois), plain * 0.5)
    assert torch.equal(dcnv2(x, rois), plain * 0.5)
    g = torch.Generator().manual_seed(0)
    for layer in (pack, modulated, dcnv2):
        for p in layer.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.05
    flat = plain.flatten(1)

    def moved(offset):
        return roiops.deform_ps_roi_pool(x, rois, offset, 3, 0.5, trans_std=0.1)

    assert torch.equal(pack(x, rois), moved(pack.offset_fc(flat).view(-1, 2, 3, 3)))
    mask = modulated.mask_fc(flat).view(-1, 1, 3, 3)
    expected = moved(modulated.offset_fc(flat).view(-1, 2, 3, 3)) * mask
    assert torch.equal(modulated(x, rois), expected)
    offset_mask = dcnv2.offset_mask_fc(flat).view(-1, 3, 3, 3)
    expected = moved(offset_mask[:, :2]) * torch.sigmoid(offset_mask[:, 2:])
    assert torch.equal(dcnv2(x, rois), expected)
    # traced by torch.fx: the same numbers
    traced = torch.fx.symbolic_trace(modulated)
    assert torch.equal(traced(x, rois), modulated(x, rois))


def test_layers_without_offsets_and_their_checks(rng):
    from roiops import dcn

    x, rois, offset = case(rng, torch.float32, 2, 1, 2, 2, per_group=3)
    plain = roiops.deform_ps_roi_pool(x, rois, None, 2, 0.5, 2)
    for layer in (dcn.DeformRoIPoolingPack(0.5, 2, 3, True, 2), dcn.DCNPooling(0.5, 2, 3, True, 2)):
        assert not list(layer.parameters()) and torch.equal(layer(x, rois), plain)
    pooling = dcn.DCNv2Pooling(0.5, 2, 3, False, 2, trans_std=0.2)
    assert (pooling.pooled_size, pooling.output_dim) == (2, 3)
    expected = roiops.deform_ps_roi_pool(x, rois, offset, 2, 0.5, 2, trans_std=0.2)
    assert torch.equal(pooling(x, rois, offset), expected)
    assert torch.equal(dcn.dcn_v2_pooling(x, rois, offset, 0.5, 2, 3, False, 2, None, 4, 0.2),
                       expected)  # fmt: skip
    assert torch.equal(dcn.deform_roi_pooling(x, rois, offset, 0.5, 2, 3, True, 2), plain)
    with pytest.raises(ValueError, match="input has 12 channels, the layer was built for "
                                         "out_channels=4 x group_size"):  # fmt: skip
        dcn.DeformRoIPooling(0.5, 2, 4, True, 2)(x, rois)
    assert "out_channels=3, no_trans=False, group_size=2" in repr(pooling)
