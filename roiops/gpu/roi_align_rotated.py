"""Rotated RoIAlign in Triton: forward and a deterministic backward.

Work split as ``roiops.gpu.roi_align``: forward, one program per (RoI, block of its
outputs), each lane rotating its bin's sampling points; backward, one program per (RoI,
bin, block of channels) adding each point's four bilinear shares into the fixed-point
accumulator (``roiops.gpu.fixed_point``). Rotation couples rows and columns, so there
is no separable per-cell sum here: four atomics per point. Arithmetic follows
``roiops.reference.roi_align_rotated`` (cos and sin in float64, IEEE division).
"""

from __future__ import annotations

import triton
import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, add_to_cell, fixed_point_scale
from roiops.gpu.launch import Launch
from roiops.gpu.roi_align import bilinear_axis
from roiops.gpu.rois import adaptive_grid, batch_index, div_rn, from_bits, is_finite, scale_bits
from roiops.gpu.tiles import (
    bin_channels_grid,
    bin_channels_tile,
    bins_grid,
    bins_tile,
    kernel,
    output_offsets,
    store_bins,
)

PI = tl.constexpr(3.141592653589793)


@triton.jit
def _rotated_geometry(ROIS, k, N, SCALE_BITS, sampling_ratio, usable, PH: tl.constexpr,
                      PW: tl.constexpr, ALIGNED: tl.constexpr, DEGREES: tl.constexpr,
                      CLOCKWISE: tl.constexpr):  # fmt: skip
    """(n, center_h, center_w, start_h, start_w, bin_h, bin_w, cos, sin, grid_h, grid_w,
    valid) of rotated RoI k (rows of 6: batch, cx, cy, w, h, angle). Not valid: a bad
    batch index, a non-finite value, (aligned) a negative size, or not ``usable`` (e.g.
    its pyramid level is out of range); its grid is empty."""
    dt = ROIS.dtype.element_ty
    spatial_scale = from_bits(SCALE_BITS, dt)
    n, valid = batch_index(ROIS, k, N, 6)
    roi = ROIS + k.to(tl.int64) * 6
    cx = tl.load(roi + 1)
    cy = tl.load(roi + 2)
    w = tl.load(roi + 3)
    h = tl.load(roi + 4)
    angle = tl.load(roi + 5)
    valid = valid & is_finite(cx) & is_finite(cy) & is_finite(w) & is_finite(h)
    valid = valid & is_finite(angle) & usable
    offset = 0.5 if ALIGNED else 0.0
    center_w = cx * spatial_scale - offset
    center_h = cy * spatial_scale - offset
    roi_w = w * spatial_scale
    roi_h = h * spatial_scale
    if ALIGNED:
        valid = valid & (roi_w >= 0) & (roi_h >= 0)
    else:
        roi_w = tl.maximum(roi_w, 1.0)
        roi_h = tl.maximum(roi_h, 1.0)
    theta = angle.to(tl.float64)
    if DEGREES:
        theta = theta * PI / 180.0
    if CLOCKWISE:
        theta = -theta
    # the angle rounded to the RoIs' dtype, then cos and sin in float64, rounded once
    theta = theta.to(dt).to(tl.float64)
    cos_t = tl.cos(theta).to(dt)
    sin_t = tl.sin(theta).to(dt)
    bin_h = div_rn(roi_h, PH)
    bin_w = div_rn(roi_w, PW)
    grid_h, grid_w, valid = adaptive_grid(bin_h, bin_w, sampling_ratio, valid)
    n = tl.where(valid, n, 0)
    return (n, center_h, center_w, -roi_h * 0.5, -roi_w * 0.5, bin_h, bin_w, cos_t, sin_t,
            grid_h, grid_w, valid)  # fmt: skip


@triton.jit
def _rotated_point(center_h, center_w, start_h, start_w, bin_h, bin_w, cos_t, sin_t, ph, pw,
                   iy, ix, gh, gw, H, W):  # fmt: skip
    """(y_lo, y_hi, x_lo, x_hi, wy_lo, wy_hi, wx_lo, wx_hi, inside) of point (iy, ix) of
    bin (ph, pw): laid out in the box's frame, rotated about its centre."""
    yy = (start_h + ph * bin_h) + div_rn((iy + 0.5) * bin_h, gh)
    xx = (start_w + pw * bin_w) + div_rn((ix + 0.5) * bin_w, gw)
    y = yy * cos_t - xx * sin_t + center_h
    x = yy * sin_t + xx * cos_t + center_w
    inside = (y >= -1.0) & (y <= H) & (x >= -1.0) & (x <= W)
    y_lo, y_hi, wy_lo, wy_hi = bilinear_axis(y, H)
    x_lo, x_hi, wx_lo, wx_hi = bilinear_axis(x, W)
    return y_lo, y_hi, x_lo, x_hi, wy_lo, wy_hi, wx_lo, wx_hi, inside


@kernel
def roi_align_rotated_forward_kernel(
    X, ROIS, OUT, N, C, H, W, scale_bits, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, DEGREES: tl.constexpr,
    CLOCKWISE: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] from X[N, C, H, W] (NCHW) and rotated ROIS[K, 6]."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    rotated_forward_bins(X, ROIS, OUT, k, c, p, ok, N, C, H, W, scale_bits, sampling_ratio,
                         True, PH, PW, ALIGNED, DEGREES, CLOCKWISE, BLOCK)  # fmt: skip


@triton.jit
def rotated_forward_bins(X, ROIS, OUT, k, c, p, ok, N, C, H, W, scale_bits, sampling_ratio,
                         usable, PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr,
                         DEGREES: tl.constexpr, CLOCKWISE: tl.constexpr,
                         BLOCK: tl.constexpr):  # fmt: skip
    """The forward's work for the lanes (k, c, p) where ``ok``: OUT[k, c, p] from X[N, C,
    H, W] (NCHW); NaN for a RoI that is not valid or not ``usable``."""
    ph = p // PW
    pw = p % PW
    n, ch, cw, sh, sw, bh, bw, cos_t, sin_t, gh, gw, valid = _rotated_geometry(
        ROIS, k, N, scale_bits, sampling_ratio, usable, PH, PW, ALIGNED, DEGREES, CLOCKWISE
    )
    plane = X + (n * C + c.to(tl.int64)) * H * W
    acc = tl.zeros((BLOCK,), dtype=tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64)
    for iy in range(0, gh):
        for ix in range(0, gw):
            y_lo, y_hi, x_lo, x_hi, wy_lo, wy_hi, wx_lo, wx_hi, inside = _rotated_point(
                ch, cw, sh, sw, bh, bw, cos_t, sin_t, ph, pw, iy, ix, gh, gw, H, W
            )
            m = inside & ok
            v = (
                wy_lo * wx_lo * tl.load(plane + y_lo * W + x_lo, mask=m, other=0.0).to(acc.dtype)
                + wy_lo * wx_hi * tl.load(plane + y_lo * W + x_hi, mask=m, other=0.0).to(acc.dtype)
                + wy_hi * wx_lo * tl.load(plane + y_hi * W + x_lo, mask=m, other=0.0).to(acc.dtype)
                + wy_hi * wx_hi * tl.load(plane + y_hi * W + x_hi, mask=m, other=0.0).to(acc.dtype)
            )
            acc += tl.where(m, v, 0.0)
    acc = div_rn(acc, tl.maximum(gh * gw, 1).to(acc.dtype))
    acc = tl.where(valid, acc, float("nan"))
    store_bins(OUT, OUT, acc, acc, k, c, p, ok, C, PH * PW, False)


@kernel
def roi_align_rotated_backward_kernel(
    G, ROIS, AMAX, ACC, N, C, H, W, scale_bits, sampling_ratio, log2_count,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, DEGREES: tl.constexpr,
    CLOCKWISE: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += the gradient of one (RoI, bin, block of
    channels) from G[K, C, PH, PW]: ``g * w / count`` to each neighbour of each point."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    rotated_backward_bin(G, ROIS, AMAX, ACC, k, p, c, c_ok, N, C, H, W, scale_bits,
                         sampling_ratio, log2_count, True, PH, PW, ALIGNED, DEGREES,
                         CLOCKWISE)  # fmt: skip


@triton.jit
def rotated_backward_bin(G, ROIS, AMAX, ACC, k, p, c, c_ok, N, C, H, W, scale_bits,
                         sampling_ratio, log2_count, usable, PH: tl.constexpr,
                         PW: tl.constexpr, ALIGNED: tl.constexpr, DEGREES: tl.constexpr,
                         CLOCKWISE: tl.constexpr):  # fmt: skip
    """The backward's work for (RoI k, bin p, channels c where ``c_ok``): ACC[N, H, W, C]
    (int64 fixed point) += ``g * w / count`` at each neighbour of each point; nothing for
    a RoI that is not valid or not ``usable``."""
    n, ch, cw, sh, sw, bh, bw, cos_t, sin_t, gh, gw, valid = _rotated_geometry(
        ROIS, k, N, scale_bits, sampling_ratio, usable, PH, PW, ALIGNED, DEGREES, CLOCKWISE
    )
    g_at, _ = output_offsets(k, c, p, C, PH * PW)
    dt = ch.dtype
    g = tl.load(G + g_at, mask=c_ok, other=0.0).to(dt)
    count = tl.maximum(gh * gw, 1).to(dt)
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    channel = ACC + n * H * W * C + c
    for iy in range(0, gh):
        for ix in range(0, gw):
            y_lo, y_hi, x_lo, x_hi, wy_lo, wy_hi, wx_lo, wx_hi, inside = _rotated_point(
                ch, cw, sh, sw, bh, bw, cos_t, sin_t, p // PW, p % PW, iy, ix, gh, gw, H, W
            )
            if inside:
                add_point_gradient(channel, y_lo.to(tl.int64) * W, y_hi.to(tl.int64) * W, x_lo,
                                   x_hi, wy_lo, wy_hi, wx_lo, wx_hi, g, count, C, scale,
                                   c_ok)  # fmt: skip


@triton.jit
def add_point_gradient(channel, row_lo, row_hi, x_lo, x_hi, wy_lo, wy_hi, wx_lo, wx_hi, g,
                       count, C, scale, mask):  # fmt: skip
    """The fixed-point accumulator (``channel``: ``add_to_cell``'s) += ``g * w / count`` at
    each of a point's four neighbours (rows at ``row_lo``, ``row_hi``; columns ``x_lo``,
    ``x_hi``), w its bilinear weight: (lo, lo), (lo, hi), (hi, lo), (hi, hi)."""
    add_to_cell(channel, row_lo + x_lo, C, div_rn(g * (wy_lo * wx_lo), count), scale, mask)
    add_to_cell(channel, row_lo + x_hi, C, div_rn(g * (wy_lo * wx_hi), count), scale, mask)
    add_to_cell(channel, row_hi + x_lo, C, div_rn(g * (wy_hi * wx_lo), count), scale, mask)
    add_to_cell(channel, row_hi + x_hi, C, div_rn(g * (wy_hi * wx_hi), count), scale, mask)


# ----------------------------------------------------------------------------- launchers
def roi_align_rotated_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                              aligned, degrees, clockwise, out_dtype=None):  # fmt: skip
    """``out[K, C, ph, pw]`` for ``input[N, C, H, W]`` (read as NCHW), ``rois[K, 6]``, of
    ``out_dtype`` (the input's by default; float32 keeps a half map's sums unrounded)."""
    sizes = input.shape
    out = input.new_empty((rois.shape[0], sizes[1], pooled_h, pooled_w), dtype=out_dtype)
    launch = _forward_launch(sizes, input.dtype, out.dtype, input.get_device(), rois.shape[0],
                             spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
                             degrees, clockwise,
                             tiles.forward_rois_inner(sampling_ratio <= 0))  # fmt: skip
    launch(input.contiguous(), rois, out)
    return out


@tiles.cached
def _forward_launch(sizes, dtype, out_dtype, device, K, spatial_scale, pooled_h, pooled_w,
                    sampling_ratio, aligned, degrees, clockwise, rois_inner) -> Launch:  # fmt: skip
    """``roi_align_rotated_forward``'s launch for a map of ``sizes`` (N, C, H, W) of
    ``dtype`` on ``device``, an output of ``out_dtype``, K RoIs, these parameters and
    settings: its tensors ``(input, rois, out)``."""
    N, C, H, W = sizes
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "roi_align_rotated",
                                       adaptive=sampling_ratio <= 0)  # fmt: skip
    return Launch(roi_align_rotated_forward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), sampling_ratio), PH=pooled_h,
                  PW=pooled_w, ALIGNED=aligned, DEGREES=degrees, CLOCKWISE=clockwise,
                  BLOCK=block, ROIS_INNER=rois_inner, num_warps=num_warps)  # fmt: skip


def roi_align_rotated_backward(grad, rois, grad_input, spatial_scale, pooled_h, pooled_w,
                               sampling_ratio, aligned, degrees, clockwise):  # fmt: skip
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``."""
    sums = Accumulator(grad, grad_input.shape)
    launch = _backward_launch(grad_input.shape, rois.shape[0], grad.dtype, grad.get_device(),
                              spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
                              degrees, clockwise, sums.log2_count,
                              tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, sums.amax, sums.acc)
    return sums.write_to(grad_input)


@tiles.cached
def _backward_launch(sizes, K, dtype, device, spatial_scale, pooled_h, pooled_w,
                     sampling_ratio, aligned, degrees, clockwise, log2_count,
                     rois_inner) -> Launch:  # fmt: skip
    """``roi_align_rotated_backward``'s launch for K RoIs' gradients of ``dtype`` on
    ``device`` into a map of ``sizes`` (N, C, H, W), these parameters and settings: its
    tensors ``(grad, rois, amax, acc)``."""
    N, C, H, W = sizes
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "roi_align_rotated")
    return Launch(roi_align_rotated_backward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), sampling_ratio, log2_count),
                  PH=pooled_h, PW=pooled_w, ALIGNED=aligned, DEGREES=degrees,
                  CLOCKWISE=clockwise, BLOCK_C=block_c, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip
