"""Deformable position-sensitive RoI pooling in Triton: forward, deterministic input and
offset gradients.

Forward: one program per (RoI, block of its outputs), each lane placing its bin's
samples (its class's offset) and reading its input channel. Input gradient: one program
per (RoI, bin, class of output channels, block of the class's channels), adding each kept
sample's four bilinear shares into the fixed-point accumulator
(``roiops.gpu.fixed_point``). Offset gradient: one program per (RoI, class, part), which
visits the part's bins and the class's channels and writes its two sums (no atomics).
Arithmetic follows ``roiops.reference.deform_ps_roi_pool`` (IEEE division; compiled code
may fuse a multiply and an add, so GPU results agree with the reference to rounding, not
bit for bit).
"""

from __future__ import annotations

import triton
import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, add_to_cell, fixed_point_scale
from roiops.gpu.launch import Launch
from roiops.gpu.roi_pool import rounded_half_away
from roiops.gpu.rois import div_rn, from_bits, is_finite, load_box, scale_bits
from roiops.gpu.tiles import bins_grid, bins_tile, check_grid, kernel, roi_and_block, store_bins


@triton.jit
def _geometry(ROIS, k, N, SCALE_BITS, PH: tl.constexpr, PW: tl.constexpr, S: tl.constexpr):
    """(n, start_h, start_w, height, width, bin_h, bin_w, step_h, step_w, valid) of RoI
    k: its corners rounded to whole pixels and scaled (the end a pixel further), at least
    0.1 cell a side. Not valid (n = 0): a bad batch index, or scaled corners or sides that
    are not finite."""
    dt = ROIS.dtype.element_ty
    scale = from_bits(SCALE_BITS, dt)
    n, x1, y1, x2, y2, valid = load_box(ROIS, k, N)
    start_w = rounded_half_away(x1) * scale - 0.5
    start_h = rounded_half_away(y1) * scale - 0.5
    end_w = (rounded_half_away(x2) + 1.0) * scale - 0.5
    end_h = (rounded_half_away(y2) + 1.0) * scale - 0.5
    valid = valid & is_finite(start_w) & is_finite(start_h) & is_finite(end_w)
    valid = valid & is_finite(end_h) & is_finite(end_w - start_w) & is_finite(end_h - start_h)
    # (a float literal is a float32 constant: 0.1 made in float64, then rounded to dt)
    least = tl.full([], 0.1, tl.float64).to(dt)
    width = tl.maximum(end_w - start_w, least)
    height = tl.maximum(end_h - start_h, least)
    bin_w = div_rn(width, PW)
    bin_h = div_rn(height, PH)
    return (tl.where(valid, n, 0), start_h, start_w, height, width, bin_h, bin_w,
            div_rn(bin_h, S), div_rn(bin_w, S), valid)  # fmt: skip


@triton.jit
def _part(index, POOLED: tl.constexpr, PART: tl.constexpr, dt: tl.constexpr):
    """The offsets' part of bin ``index`` along an axis: ``floor(index / POOLED * PART)``
    in the dtype, within the parts."""
    quotient = div_rn(index.to(dt), POOLED)
    return tl.minimum(tl.floor(quotient * PART).to(tl.int32), PART - 1)


@triton.jit
def _shift(OFFSET, k, cls, part_h, part_w, trans_std, CLASSES: tl.constexpr,
           PART: tl.constexpr):  # fmt: skip
    """(dy, dx, ok): the move of class ``cls``'s bins in part (part_h, part_w) in units of
    the RoI's size, and whether its offset is finite; (0, 0) without offsets."""
    if CLASSES == 0:
        dy = tl.zeros_like(trans_std)
        dx = dy
        finite = True
    else:
        at = OFFSET + ((k.to(tl.int64) * 2 * CLASSES + 2 * cls) * PART + part_h) * PART + part_w
        off_w = tl.load(at)
        off_h = tl.load(at + PART * PART)
        dy = off_h * trans_std
        dx = off_w * trans_std
        finite = is_finite(off_w) & is_finite(off_h)
    return dy, dx, finite


@triton.jit
def _sample(h_start, w_start, step_h, step_w, ih, iw, H, W):
    """(y0, y1, x0, x1, fy, fx, kept) of sample (ih, iw) of a bin whose first sample is at
    (h_start, w_start): left out past the map by more than half a cell, else clamped into
    it, between ``floor`` and ``ceil``."""
    x = w_start + iw * step_w
    y = h_start + ih * step_h
    kept = (x >= -0.5) & (x <= W - 0.5) & (y >= -0.5) & (y <= H - 0.5)
    x = tl.minimum(tl.maximum(x, 0.0), (W - 1).to(x.dtype))
    y = tl.minimum(tl.maximum(y, 0.0), (H - 1).to(y.dtype))
    x0 = tl.floor(x)
    y0 = tl.floor(y)
    return (y0.to(tl.int32), tl.ceil(y).to(tl.int32), x0.to(tl.int32), tl.ceil(x).to(tl.int32),
            y - y0, x - x0, kept)  # fmt: skip


@triton.jit
def _bin_start(ph, pw, dy, dx, start_h, start_w, height, width, bin_h, bin_w):
    """(h_start, w_start): the first sample of bin (ph, pw) moved by (dy, dx) RoI sizes."""
    h_start = ph.to(bin_h.dtype) * bin_h + start_h
    w_start = pw.to(bin_w.dtype) * bin_w + start_w
    return h_start + dy * height, w_start + dx * width


@kernel
def deform_ps_roi_pool_forward_kernel(
    X, ROIS, OFFSET, OUT, N, C, C_OUT, PER_CLASS, H, W, scale_bits, trans_std_bits,
    PH: tl.constexpr, PW: tl.constexpr, S: tl.constexpr, G: tl.constexpr, PART: tl.constexpr,
    CLASSES: tl.constexpr, BLOCK: tl.constexpr, ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C_OUT, PH, PW] from X[N, C, H, W] (NCHW), ROIS[K, 5] and OFFSET[K, 2 *
    CLASSES, PART, PART]: each bin's mean over its kept samples; NaN where the RoI or the
    bin's offset is not valid."""
    k, c, p, ok = bins_tile(C_OUT, PH * PW, BLOCK, ROIS_INNER)
    n, start_h, start_w, height, width, bin_h, bin_w, step_h, step_w, valid = _geometry(
        ROIS, k, N, scale_bits, PH, PW, S
    )
    dt = start_h.dtype
    trans_std = from_bits(trans_std_bits, dt)
    ph = p // PW
    pw = p % PW
    cls = c // PER_CLASS
    dy, dx, finite = _shift(OFFSET, k, cls, _part(ph, PH, PART, dt), _part(pw, PW, PART, dt),
                            trans_std, CLASSES, PART)  # fmt: skip
    # (a scalar & a vector trips the interpreter: where)
    valid = tl.where(valid, finite, False)
    h_start, w_start = _bin_start(ph, pw, dy, dx, start_h, start_w, height, width, bin_h, bin_w)
    c_in = (c * G + ph * G // PH) * G + pw * G // PW
    plane = X + (n * C + c_in.to(tl.int64)) * H * W
    acc = tl.zeros([BLOCK], dt)
    count = tl.zeros([BLOCK], tl.int32)
    for ih in range(0, S):
        for iw in range(0, S):
            y0, y1, x0, x1, fy, fx, kept = _sample(h_start, w_start, step_h, step_w, ih, iw, H, W)
            m = tl.where(valid, ok & kept, False)
            v00 = tl.load(plane + y0 * W + x0, mask=m, other=0.0).to(dt)
            v10 = tl.load(plane + y1 * W + x0, mask=m, other=0.0).to(dt)
            v01 = tl.load(plane + y0 * W + x1, mask=m, other=0.0).to(dt)
            v11 = tl.load(plane + y1 * W + x1, mask=m, other=0.0).to(dt)
            value = (1.0 - fx) * (1.0 - fy) * v00 + (1.0 - fx) * fy * v10
            value = value + fx * (1.0 - fy) * v01 + fx * fy * v11
            acc += tl.where(m, value, 0.0)
            count += m.to(tl.int32)
    out = tl.where(count > 0, div_rn(acc, tl.maximum(count, 1).to(dt)), 0.0)
    out = tl.where(valid, out, float("nan"))
    store_bins(OUT, OUT, out, out, k, c, p, ok, C_OUT, PH * PW, False)


@triton.jit
def _class_tile(PER_CLASS, GROUPS, P: tl.constexpr, BLOCK_C: tl.constexpr,
                ROIS_INNER: tl.constexpr):  # fmt: skip
    """(k, p, cls, c, c_ok): this program's RoI, bin, class of output channels (of
    GROUPS, PER_CLASS channels each) and, per lane, output channel of a block of the
    class's."""
    blocks = tl.cdiv(PER_CLASS, BLOCK_C)
    pair, block = roi_and_block(blocks * GROUPS, ROIS_INNER)
    cls = block // blocks
    lane = (block % blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pair // P, pair % P, cls, cls * PER_CLASS + lane, lane < PER_CLASS


@kernel
def deform_ps_roi_pool_backward_kernel(
    G, ROIS, OFFSET, AMAX, ACC, N, C, C_OUT, PER_CLASS, GROUPS, H, W, scale_bits,
    trans_std_bits, log2_count, PH: tl.constexpr, PW: tl.constexpr, S: tl.constexpr,
    GROUP: tl.constexpr, PART: tl.constexpr, CLASSES: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += the gradient of one (RoI, bin, class, block
    of its output channels) from G[K, C_OUT, PH, PW]: ``g / count`` times each corner's
    weight, at each kept sample; nothing from a RoI or bin that is not valid."""
    k, p, cls, c, c_ok = _class_tile(PER_CLASS, GROUPS, PH * PW, BLOCK_C, ROIS_INNER)
    n, start_h, start_w, height, width, bin_h, bin_w, step_h, step_w, valid = _geometry(
        ROIS, k, N, scale_bits, PH, PW, S
    )
    dt = start_h.dtype
    trans_std = from_bits(trans_std_bits, dt)
    ph = p // PW
    pw = p % PW
    dy, dx, finite = _shift(OFFSET, k, cls, _part(ph, PH, PART, dt), _part(pw, PW, PART, dt),
                            trans_std, CLASSES, PART)  # fmt: skip
    valid = valid & finite
    h_start, w_start = _bin_start(ph, pw, dy, dx, start_h, start_w, height, width, bin_h, bin_w)
    count = 0
    for ih in range(0, S):
        for iw in range(0, S):
            _, _, _, _, _, _, kept = _sample(h_start, w_start, step_h, step_w, ih, iw, H, W)
            count += kept.to(tl.int32)
    g = tl.load(G + (k.to(tl.int64) * C_OUT + c) * PH * PW + p, mask=c_ok, other=0.0).to(dt)
    share = div_rn(g, tl.maximum(count, 1).to(dt))
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    c_in = (c * GROUP + ph * GROUP // PH) * GROUP + pw * GROUP // PW
    channel = ACC + n * H * W * C + c_in
    for ih in range(0, S):
        for iw in range(0, S):
            y0, y1, x0, x1, fy, fx, kept = _sample(h_start, w_start, step_h, step_w, ih, iw, H, W)
            if kept & valid:
                row0 = y0.to(tl.int64) * W
                row1 = y1.to(tl.int64) * W
                add_to_cell(channel, row0 + x0, C, (1.0 - fx) * (1.0 - fy) * share, scale, c_ok)
                add_to_cell(channel, row1 + x0, C, (1.0 - fx) * fy * share, scale, c_ok)
                add_to_cell(channel, row0 + x1, C, fx * (1.0 - fy) * share, scale, c_ok)
                add_to_cell(channel, row1 + x1, C, fx * fy * share, scale, c_ok)


@kernel
def deform_ps_roi_pool_offset_backward_kernel(
    G, X, ROIS, OFFSET, GRAD_OFFSET, N, C, C_OUT, H, W, scale_bits, trans_std_bits,
    PH: tl.constexpr, PW: tl.constexpr, S: tl.constexpr, GROUP: tl.constexpr,
    PART: tl.constexpr, CLASSES: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """GRAD_OFFSET[k, 2 * cls : 2 * cls + 2, part_h, part_w] for one (RoI, class, part):
    over the part's bins in order, each kept sample's slope times ``g / count``, summed
    over the class's channels, times ``trans_std`` and the RoI's width (x) or height (y);
    0 where the RoI or the offset is not valid."""
    program = tl.program_id(0)
    k = program // (CLASSES * PART * PART)
    cls = program // (PART * PART) % CLASSES
    part_h = program // PART % PART
    part_w = program % PART
    n, start_h, start_w, height, width, bin_h, bin_w, step_h, step_w, valid = _geometry(
        ROIS, k, N, scale_bits, PH, PW, S
    )
    dt = start_h.dtype
    trans_std = from_bits(trans_std_bits, dt)
    dy, dx, finite = _shift(OFFSET, k, cls, part_h, part_w, trans_std, CLASSES, PART)
    valid = valid & finite
    per_class = C_OUT // CLASSES
    gx = tl.zeros((), dt)
    gy = tl.zeros((), dt)
    for p in range(0, PH * PW):
        ph = p // PW
        pw = p % PW
        if (_part(ph, PH, PART, dt) == part_h) & (_part(pw, PW, PART, dt) == part_w) & valid:
            h_start, w_start = _bin_start(ph, pw, dy, dx, start_h, start_w, height, width,
                                          bin_h, bin_w)  # fmt: skip
            count = 0
            for ih in range(0, S):
                for iw in range(0, S):
                    _, _, _, _, _, _, kept = _sample(h_start, w_start, step_h, step_w, ih,
                                                     iw, H, W)  # fmt: skip
                    count += kept.to(tl.int32)
            j = (ph * GROUP // PH) * GROUP + pw * GROUP // PW
            for c0 in range(0, per_class, BLOCK_C):
                lane = c0 + tl.arange(0, BLOCK_C)
                c_ok = lane < per_class
                c = cls * per_class + lane
                g_at = (k.to(tl.int64) * C_OUT + c) * PH * PW + p
                g = tl.load(G + g_at, mask=c_ok, other=0.0).to(dt)
                share = div_rn(g, tl.maximum(count, 1).to(dt))
                plane = X + (n * C + (c * GROUP * GROUP + j).to(tl.int64)) * H * W
                acc_x = tl.zeros([BLOCK_C], dt)
                acc_y = tl.zeros([BLOCK_C], dt)
                for ih in range(0, S):
                    for iw in range(0, S):
                        y0, y1, x0, x1, fy, fx, kept = _sample(h_start, w_start, step_h, step_w,
                                                               ih, iw, H, W)  # fmt: skip
                        m = tl.where(kept, c_ok, False)
                        v00 = tl.load(plane + y0 * W + x0, mask=m, other=0.0).to(dt)
                        v10 = tl.load(plane + y1 * W + x0, mask=m, other=0.0).to(dt)
                        v01 = tl.load(plane + y0 * W + x1, mask=m, other=0.0).to(dt)
                        v11 = tl.load(plane + y1 * W + x1, mask=m, other=0.0).to(dt)
                        slope_x = v11 * fy + v01 * (1.0 - fy) - v10 * fy - v00 * (1.0 - fy)
                        slope_y = v11 * fx + v10 * (1.0 - fx) - v01 * fx - v00 * (1.0 - fx)
                        acc_x += tl.where(m, slope_x * share, 0.0)
                        acc_y += tl.where(m, slope_y * share, 0.0)
                gx += tl.sum(acc_x, axis=0) * (trans_std * width)
                gy += tl.sum(acc_y, axis=0) * (trans_std * height)
    out = GRAD_OFFSET + ((k.to(tl.int64) * 2 * CLASSES + 2 * cls) * PART + part_h) * PART + part_w
    tl.store(out, gx)
    tl.store(out + PART * PART, gy)


# ----------------------------------------------------------------------------- launchers
def _classes(offset) -> int:
    return offset.shape[1] // 2


def _class_block(channels_out: int, classes: int) -> tuple[int, int]:
    """(per_class, block_c): the output channels of each class of offsets, and the block
    of them a backward program takes."""
    per_class = channels_out // max(classes, 1)
    return per_class, min(tiles.BACKWARD_CHANNELS, tiles.next_power_of_2(per_class))


def deform_ps_roi_pool_forward(input, rois, offset, spatial_scale, pooled_h, pooled_w,
                               sample_per_part, group_size, part_size, trans_std):  # fmt: skip
    """``out[K, C / group_size**2, ph, pw]`` for ``input[N, C, H, W]`` (read as NCHW),
    ``rois[K, 5]`` and ``offset`` (contiguous, the RoIs' dtype)."""
    sizes = input.shape
    channels_out = sizes[1] // (group_size * group_size)
    out = input.new_empty((rois.shape[0], channels_out, pooled_h, pooled_w))
    launch = _forward_launch(sizes, input.dtype, input.get_device(), rois.shape[0],
                             spatial_scale, pooled_h, pooled_w, sample_per_part, group_size,
                             part_size, trans_std, _classes(offset),
                             tiles.forward_rois_inner(False))  # fmt: skip
    launch(input.contiguous(), rois, offset, out)
    return out


@tiles.cached
def _forward_launch(sizes, dtype, device, K, spatial_scale, pooled_h, pooled_w,
                    sample_per_part, group_size, part_size, trans_std, classes,
                    rois_inner) -> Launch:  # fmt: skip
    """``deform_ps_roi_pool_forward``'s launch for a map of ``sizes`` (N, C, H, W) of
    ``dtype`` on ``device``, K RoIs, these parameters and settings: its tensors
    ``(input, rois, offset, out)``."""
    N, C, H, W = sizes
    channels_out = C // (group_size * group_size)
    grid, block, num_warps = bins_grid(K, channels_out, pooled_h, pooled_w, "deform_ps_roi_pool")
    return Launch(deform_ps_roi_pool_forward_kernel, grid,
                  (N, C, channels_out, channels_out // max(classes, 1), H, W,
                   scale_bits(spatial_scale), scale_bits(trans_std)),
                  PH=pooled_h, PW=pooled_w, S=sample_per_part, G=group_size, PART=part_size,
                  CLASSES=classes, BLOCK=block, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def deform_ps_roi_pool_backward(grad, rois, offset, grad_input, spatial_scale, pooled_h,
                                pooled_w, sample_per_part, group_size, part_size,
                                trans_std):  # fmt: skip
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C_out, ph, pw]``."""
    sums = Accumulator(grad, grad_input.shape)
    launch = _backward_launch(grad_input.shape, grad.shape[1], rois.shape[0], grad.dtype,
                              grad.get_device(), spatial_scale, pooled_h, pooled_w,
                              sample_per_part, group_size, part_size, trans_std,
                              _classes(offset), sums.log2_count,
                              tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, offset, sums.amax, sums.acc)
    return sums.write_to(grad_input)


@tiles.cached
def _backward_launch(sizes, channels_out, K, dtype, device, spatial_scale, pooled_h, pooled_w,
                     sample_per_part, group_size, part_size, trans_std, classes, log2_count,
                     rois_inner) -> Launch:  # fmt: skip
    """``deform_ps_roi_pool_backward``'s launch for K RoIs' gradients of ``dtype`` on
    ``device`` into a map of ``sizes`` (N, C, H, W), these parameters and settings: its
    tensors ``(grad, rois, offset, amax, acc)``."""
    N, C, H, W = sizes
    per_class, block_c = _class_block(channels_out, classes)
    num_warps = max(1, block_c // (32 * tiles.BACKWARD_PER_THREAD))
    blocks = max(classes, 1) * tiles.cdiv(per_class, block_c)
    grid = check_grid(K * pooled_h * pooled_w * blocks, "deform_ps_roi_pool")
    return Launch(deform_ps_roi_pool_backward_kernel, grid,
                  (N, C, channels_out, per_class, max(classes, 1), H, W,
                   scale_bits(spatial_scale), scale_bits(trans_std), log2_count),
                  PH=pooled_h, PW=pooled_w, S=sample_per_part, GROUP=group_size, PART=part_size,
                  CLASSES=classes, BLOCK_C=block_c, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def deform_ps_roi_pool_offset_backward(grad, input, rois, offset, spatial_scale, pooled_h,
                                       pooled_w, sample_per_part, group_size, part_size,
                                       trans_std):  # fmt: skip
    """The gradient w.r.t. ``offset`` (its shape), deterministic."""
    N, C, H, W = input.shape
    classes = _classes(offset)
    grad_offset = offset.new_empty(offset.shape)
    _, block_c = _class_block(grad.shape[1], classes)
    grid = check_grid(rois.shape[0] * classes * part_size * part_size, "deform_ps_roi_pool")
    deform_ps_roi_pool_offset_backward_kernel[grid](
        grad.contiguous(), input.contiguous(), rois, offset, grad_offset,
        N, C, grad.shape[1], H, W, scale_bits(spatial_scale), scale_bits(trans_std),
        PH=pooled_h, PW=pooled_w, S=sample_per_part, GROUP=group_size, PART=part_size,
        CLASSES=classes, BLOCK_C=block_c, num_warps=max(1, block_c // 32),
    )  # fmt: skip
    return grad_offset
