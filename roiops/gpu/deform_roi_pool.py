"""Deformable RoI pooling in Triton: forward, deterministic input and offset gradients.

Work split as ``roiops.gpu.roi_align_rotated``: forward, one program per (RoI, block of
its outputs), each lane placing its bin's shifted sampling points; input gradient, one
program per (RoI, bin, block of channels) adding each point's four bilinear shares into
the fixed-point accumulator (``roiops.gpu.fixed_point``); offset gradient, the same
programs each writing its channels' share of its bin's two sums, which the launcher adds
up in a fixed order (no atomics). Arithmetic follows
``roiops.reference.deform_roi_pool`` (IEEE division; compiled code may fuse a multiply
and an add, so GPU results agree with the reference to rounding, not bit for bit).
"""

from __future__ import annotations

import triton
import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, add_to_cell, fixed_point_scale
from roiops.gpu.launch import Launch
from roiops.gpu.roi_align import axis_sample, bin_sum, roi_extent
from roiops.gpu.rois import adaptive_grid, div_rn, from_bits, is_finite, scale_bits
from roiops.gpu.tiles import (
    bin_channels_grid,
    bin_channels_tile,
    bins_grid,
    bins_tile,
    kernel,
    output_offsets,
    store_bins,
)


@triton.jit
def _deform_bin(ROIS, OFFSET, k, p, N, SCALE_BITS, GAMMA_BITS, sampling_ratio,
                PH: tl.constexpr, PW: tl.constexpr):  # fmt: skip
    """(n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, height, width, valid) of bin
    p of RoI k (aligned RoIAlign geometry), its start shifted by ``OFFSET[k, :, p]``
    times ``gamma`` times the RoI's size. Not valid: the RoI is not (``roi_extent``; its
    grid is then empty), or the bin's offset is not finite (its points then lie at no
    finite place: outside the map)."""
    dt = ROIS.dtype.element_ty
    gamma = from_bits(GAMMA_BITS, dt)
    n, start_h, start_w, height, width, valid = roi_extent(ROIS, k, N, SCALE_BITS, True, True)
    bin_h = div_rn(height, PH)
    bin_w = div_rn(width, PW)
    # (the grid is the RoI's: the same for all its bins)
    grid_h, grid_w, valid = adaptive_grid(bin_h, bin_w, sampling_ratio, valid)
    at = OFFSET + k.to(tl.int64) * 2 * PH * PW + p
    off_w = tl.load(at)
    off_h = tl.load(at + PH * PW)
    # (a scalar & a vector trips the interpreter: where)
    valid = tl.where(valid, is_finite(off_w) & is_finite(off_h), False)
    start_h = start_h + gamma * height * off_h
    start_w = start_w + gamma * width * off_w
    return n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, height, width, valid


@triton.jit
def _point(start, bin_size, bin_index, i, grid, limit):
    """(low, high, w_low, w_high, inside, flat) of point i of a bin along one axis;
    ``flat``: the value does not move with the point there (clamped to the map's start or
    end)."""
    low, high, w_low, w_high, inside = axis_sample(start, bin_size, bin_index, i, grid, limit)
    # clamped to the last cell, or at or before the first (v <= 0: clamped to 0, so cell 0
    # with no fraction; a v in (0, 1) keeps its fraction, v itself)
    return low, high, w_low, w_high, inside, (low == high) | ((low == 0) & (w_high == 0.0))


@kernel
def deform_roi_pool_forward_kernel(
    X, ROIS, OFFSET, OUT, N, C, H, W, scale_bits, gamma_bits, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr, ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] from X[N, C, H, W] (NCHW), ROIS[K, 5] and OFFSET[K, 2, PH, PW];
    NaN for a bin that is not valid (``_deform_bin``)."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    n, sh, sw, bh, bw, gh, gw, height, width, valid = _deform_bin(
        ROIS, OFFSET, k, p, N, scale_bits, gamma_bits, sampling_ratio, PH, PW
    )
    ph = p // PW
    pw = p % PW
    plane = X + (n * C + c.to(tl.int64)) * H * W
    acc = bin_sum(plane, sh, sw, bh, bw, ph, pw, gh, gw, H, W, ok & valid, BLOCK)
    acc = div_rn(acc, tl.maximum(gh * gw, 1).to(acc.dtype))
    acc = tl.where(valid, acc, float("nan"))
    store_bins(OUT, OUT, acc, acc, k, c, p, ok, C, PH * PW, False)


@kernel
def deform_roi_pool_backward_kernel(
    G, ROIS, OFFSET, AMAX, ACC, N, C, H, W, scale_bits, gamma_bits, sampling_ratio,
    log2_count, PH: tl.constexpr, PW: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += the gradient of one (RoI, bin, block of
    channels) from G[K, C, PH, PW]: ``g / count * w`` to each neighbour of each shifted
    point; nothing from a bin that is not valid."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    n, sh, sw, bh, bw, gh, gw, height, width, valid = _deform_bin(
        ROIS, OFFSET, k, p, N, scale_bits, gamma_bits, sampling_ratio, PH, PW
    )
    g_at, argmax_at = output_offsets(k, c, p, C, PH * PW)
    dt = sh.dtype
    share = div_rn(tl.load(G + g_at, mask=c_ok, other=0.0).to(dt), tl.maximum(gh * gw, 1).to(dt))
    scale, inverse, finite = fixed_point_scale(AMAX, log2_count)
    channel = ACC + n * H * W * C + c
    for iy in range(0, gh):
        y_lo, y_hi, wy_lo, wy_hi, y_in, y_flat = _point(sh, bh, p // PW, iy, gh, H)
        row_lo = y_lo.to(tl.int64) * W
        row_hi = y_hi.to(tl.int64) * W
        for ix in range(0, gw):
            x_lo, x_hi, wx_lo, wx_hi, x_in, x_flat = _point(sw, bw, p % PW, ix, gw, W)
            if y_in & x_in & valid:
                add_to_cell(channel, row_lo + x_lo, C, share * (wy_lo * wx_lo), scale, c_ok)
                add_to_cell(channel, row_lo + x_hi, C, share * (wy_lo * wx_hi), scale, c_ok)
                add_to_cell(channel, row_hi + x_lo, C, share * (wy_hi * wx_lo), scale, c_ok)
                add_to_cell(channel, row_hi + x_hi, C, share * (wy_hi * wx_hi), scale, c_ok)


@kernel
def deform_roi_pool_offset_backward_kernel(
    G, X, ROIS, OFFSET, PARTIAL, N, C, H, W, scale_bits, gamma_bits, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """PARTIAL[program, 2] = one (RoI, bin, block of channels)'s share of the gradient
    w.r.t. the bin's (x, y) offset: ``g / count`` times the slope of the bilinear surface
    at each point, times ``gamma`` times the RoI's width (x) or height (y); 0 from a bin
    that is not valid."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C)
    n, sh, sw, bh, bw, gh, gw, height, width, valid = _deform_bin(
        ROIS, OFFSET, k, p, N, scale_bits, gamma_bits, sampling_ratio, PH, PW
    )
    dt = sh.dtype
    g_at, argmax_at = output_offsets(k, c, p, C, PH * PW)
    share = div_rn(tl.load(G + g_at, mask=c_ok, other=0.0).to(dt), tl.maximum(gh * gw, 1).to(dt))
    plane = X + (n * C + c.to(tl.int64)) * H * W
    gx = tl.zeros((), dt)
    gy = tl.zeros((), dt)
    for iy in range(0, gh):
        y_lo, y_hi, hy, ly, y_in, flat_y = _point(sh, bh, p // PW, iy, gh, H)
        for ix in range(0, gw):
            x_lo, x_hi, hx, lx, x_in, flat_x = _point(sw, bw, p % PW, ix, gw, W)
            m = tl.where(
                y_in & x_in & valid, c_ok, False
            )  # (a scalar & a vector trips the interpreter)
            v1 = tl.load(plane + y_lo * W + x_lo, mask=m, other=0.0).to(dt)
            v2 = tl.load(plane + y_lo * W + x_hi, mask=m, other=0.0).to(dt)
            v3 = tl.load(plane + y_hi * W + x_lo, mask=m, other=0.0).to(dt)
            v4 = tl.load(plane + y_hi * W + x_hi, mask=m, other=0.0).to(dt)
            dy = tl.where(flat_y, 0.0, (1.0 - lx) * (v3 - v1) + lx * (v4 - v2))
            dx = tl.where(flat_x, 0.0, (1.0 - ly) * (v2 - v1) + ly * (v4 - v3))
            gx += tl.sum(tl.where(m, share * dx, 0.0), axis=0)
            gy += tl.sum(tl.where(m, share * dy, 0.0), axis=0)
    gamma = from_bits(gamma_bits, dt)
    out = PARTIAL + tl.program_id(0).to(tl.int64) * 2
    # (an invalid RoI's size may be NaN: its sums are 0, and so is its gradient)
    tl.store(out, tl.where(valid, gx * (gamma * width), 0.0))
    tl.store(out + 1, tl.where(valid, gy * (gamma * height), 0.0))


# ----------------------------------------------------------------------------- launchers
def deform_roi_pool_forward(input, rois, offset, spatial_scale, pooled_h, pooled_w,
                            sampling_ratio, gamma):  # fmt: skip
    """``out[K, C, ph, pw]`` for ``input[N, C, H, W]`` (read as NCHW), ``rois[K, 5]``,
    ``offset[K, 2, ph, pw]`` (contiguous, the RoIs' dtype)."""
    sizes = input.shape
    out = input.new_empty((rois.shape[0], sizes[1], pooled_h, pooled_w))
    launch = _forward_launch(sizes, input.dtype, input.get_device(), rois.shape[0],
                             spatial_scale, pooled_h, pooled_w, sampling_ratio, gamma,
                             tiles.forward_rois_inner(sampling_ratio <= 0))  # fmt: skip
    launch(input.contiguous(), rois, offset, out)
    return out


@tiles.cached
def _forward_launch(sizes, dtype, device, K, spatial_scale, pooled_h, pooled_w,
                    sampling_ratio, gamma, rois_inner) -> Launch:  # fmt: skip
    """``deform_roi_pool_forward``'s launch for a map of ``sizes`` (N, C, H, W) of
    ``dtype`` on ``device``, K RoIs, these parameters and settings: its tensors
    ``(input, rois, offset, out)``."""
    N, C, H, W = sizes
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "deform_roi_pool",
                                       adaptive=sampling_ratio <= 0)  # fmt: skip
    return Launch(deform_roi_pool_forward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), scale_bits(gamma), sampling_ratio),
                  PH=pooled_h, PW=pooled_w, BLOCK=block, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def deform_roi_pool_backward(grad, rois, offset, grad_input, spatial_scale, pooled_h, pooled_w,
                             sampling_ratio, gamma):  # fmt: skip
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``."""
    sums = Accumulator(grad, grad_input.shape)
    launch = _backward_launch(grad_input.shape, rois.shape[0], grad.dtype, grad.get_device(),
                              spatial_scale, pooled_h, pooled_w, sampling_ratio, gamma,
                              sums.log2_count, tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, offset, sums.amax, sums.acc)
    return sums.write_to(grad_input)


@tiles.cached
def _backward_launch(sizes, K, dtype, device, spatial_scale, pooled_h, pooled_w,
                     sampling_ratio, gamma, log2_count, rois_inner) -> Launch:  # fmt: skip
    """``deform_roi_pool_backward``'s launch for K RoIs' gradients of ``dtype`` on
    ``device`` into a map of ``sizes`` (N, C, H, W), these parameters and settings: its
    tensors ``(grad, rois, offset, amax, acc)``."""
    N, C, H, W = sizes
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "deform_roi_pool")
    return Launch(deform_roi_pool_backward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), scale_bits(gamma), sampling_ratio,
                   log2_count), PH=pooled_h, PW=pooled_w, BLOCK_C=block_c,
                  ROIS_INNER=rois_inner, num_warps=num_warps)  # fmt: skip


def deform_roi_pool_offset_backward(grad, input, rois, offset, spatial_scale, pooled_h,
                                    pooled_w, sampling_ratio, gamma):  # fmt: skip
    """``Tensor[K, 2, ph, pw]``: the gradient w.r.t. ``offset``, deterministic."""
    K = rois.shape[0]
    N, C, H, W = input.shape
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "deform_roi_pool")
    partial = rois.new_empty((grid[0], 2))
    deform_roi_pool_offset_backward_kernel[grid](
        grad.contiguous(), input.contiguous(), rois, offset, partial,
        N, C, H, W, scale_bits(spatial_scale), scale_bits(gamma), sampling_ratio,
        PH=pooled_h, PW=pooled_w, BLOCK_C=block_c, num_warps=num_warps,
    )  # fmt: skip
    # a bin's programs (its blocks of channels) are consecutive: a plain sum, fixed order
    sums = partial.view(K, pooled_h * pooled_w, -1, 2).sum(dim=2)
    return sums.transpose(1, 2).reshape(K, 2, pooled_h, pooled_w)
