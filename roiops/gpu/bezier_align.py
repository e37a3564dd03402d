"""BezierAlign in Triton: forward and a deterministic backward.

Work split as ``roiops.gpu.deform_roi_pool``: forward, one program per (RoI, block of its
outputs), each lane centring its bin between the RoI's two Bézier curves; backward, one
program per (RoI, bin, block of channels) adding each point's four bilinear shares into
the fixed-point accumulator (``roiops.gpu.fixed_point``). Arithmetic follows
``roiops.reference.bezier_align`` (mmcv's C++ types: the curves' double-literal terms in
float64; IEEE division; compiled code may fuse a multiply and an add, so GPU results
agree with the reference to rounding, not bit for bit).
"""

from __future__ import annotations

import triton
import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, fixed_point_scale
from roiops.gpu.launch import Launch
from roiops.gpu.roi_align import axis_sample, bin_sum
from roiops.gpu.roi_align_rotated import add_point_gradient
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


@triton.jit
def _curve(p0, p1, p2, p3, u):
    """The cubic Bézier at u in mmcv's C++ types: the terms with a double literal in
    float64, ``u * u * u * p3`` in the points' dtype, summed in float64 and rounded."""
    u64 = u.to(tl.float64)
    a = 1.0 - u64
    s = (a * a * a * p0.to(tl.float64) + 3.0 * u64 * a * a * p1.to(tl.float64)
         + 3.0 * u64 * u64 * a * p2.to(tl.float64))  # fmt: skip
    return (s + (u * u * u * p3).to(tl.float64)).to(p0.dtype)


@triton.jit
def _centre(roi, c0: tl.constexpr, c1: tl.constexpr, c2: tl.constexpr, c3: tl.constexpr,
            c4: tl.constexpr, c5: tl.constexpr, c6: tl.constexpr, c7: tl.constexpr, scale,
            u, v, offset):  # fmt: skip
    """One coordinate of a bin's centre: between the curves through the control values
    in columns c0..c3 (top) and c4..c7 (bottom) of ``roi``, at u and v."""
    top = _curve(tl.load(roi + c0) * scale, tl.load(roi + c1) * scale,
                 tl.load(roi + c2) * scale, tl.load(roi + c3) * scale, u)  # fmt: skip
    bottom = _curve(tl.load(roi + c4) * scale, tl.load(roi + c5) * scale,
                    tl.load(roi + c6) * scale, tl.load(roi + c7) * scale, u)  # fmt: skip
    # ``x1 * v + x0 * (1. - v) - offset``: the first product in the dtype, the rest float64
    mixed = (bottom * v).to(tl.float64) + top.to(tl.float64) * (1.0 - v.to(tl.float64))
    return (mixed - offset).to(top.dtype)


@triton.jit
def _bezier_bins(ROIS, k, p, N, SCALE_BITS, sampling_ratio, PH: tl.constexpr,
                 PW: tl.constexpr, ALIGNED: tl.constexpr):  # fmt: skip
    """(n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, valid) of bin(s) p of Bézier
    RoI k (rows of 17): the corner of a bin-sized box around its centre. Not valid (and an
    empty grid): a bad batch index, a non-finite coordinate, or an absurd adaptive grid."""
    dt = ROIS.dtype.element_ty
    scale = from_bits(SCALE_BITS, dt)
    n, valid = batch_index(ROIS, k, N, 17)
    roi = ROIS + k.to(tl.int64) * 17
    for i in tl.static_range(1, 17):
        valid = valid & is_finite(tl.load(roi + i))
    # the control points' x at columns 1, 3, 5, 7 (top), 15, 13, 11, 9 (bottom), y after
    width = tl.maximum(tl.abs(tl.load(roi + 1) * scale - tl.load(roi + 7) * scale),
                       tl.abs(tl.load(roi + 15) * scale - tl.load(roi + 9) * scale))  # fmt: skip
    height = tl.maximum(tl.abs(tl.load(roi + 2) * scale - tl.load(roi + 8) * scale),
                        tl.abs(tl.load(roi + 16) * scale - tl.load(roi + 10) * scale))  # fmt: skip
    if not ALIGNED:
        width = tl.maximum(width, 1.0)
        height = tl.maximum(height, 1.0)
    bin_h = div_rn(height, PH)
    bin_w = div_rn(width, PW)
    grid_h, grid_w, valid = adaptive_grid(bin_h, bin_w, sampling_ratio, valid)
    u = div_rn((p % PW).to(dt), PW)
    v = div_rn((p // PW).to(dt), PH)
    offset = 0.5 if ALIGNED else 0.0
    centre_w = _centre(roi, 1, 3, 5, 7, 15, 13, 11, 9, scale, u, v, offset)
    centre_h = _centre(roi, 2, 4, 6, 8, 16, 14, 12, 10, scale, u, v, offset)
    n = tl.where(valid, n, 0)
    return (n, centre_h - 0.5 * bin_h, centre_w - 0.5 * bin_w, bin_h, bin_w, grid_h, grid_w,
            valid)  # fmt: skip


@kernel
def bezier_align_forward_kernel(
    X, ROIS, OUT, N, C, H, W, scale_bits, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] from X[N, C, H, W] (NCHW) and Bézier ROIS[K, 17]; NaN for a RoI
    that is not valid."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    n, sh, sw, bh, bw, gh, gw, valid = _bezier_bins(ROIS, k, p, N, scale_bits, sampling_ratio,
                                                    PH, PW, ALIGNED)  # fmt: skip
    plane = X + (n * C + c.to(tl.int64)) * H * W
    acc = bin_sum(plane, sh, sw, bh, bw, 0, 0, gh, gw, H, W, ok, BLOCK)
    acc = div_rn(acc, tl.maximum(gh * gw, 1).to(acc.dtype))
    acc = tl.where(valid, acc, float("nan"))
    store_bins(OUT, OUT, acc, acc, k, c, p, ok, C, PH * PW, False)


@kernel
def bezier_align_backward_kernel(
    G, ROIS, AMAX, ACC, N, C, H, W, scale_bits, sampling_ratio, log2_count,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += the gradient of one (RoI, bin, block of
    channels) from G[K, C, PH, PW]: ``g * w / count`` to each neighbour of each point;
    nothing from a RoI that is not valid."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    n, sh, sw, bh, bw, gh, gw, valid = _bezier_bins(ROIS, k, p, N, scale_bits, sampling_ratio,
                                                    PH, PW, ALIGNED)  # fmt: skip
    g_at, argmax_at = output_offsets(k, c, p, C, PH * PW)
    dt = sh.dtype
    g = tl.load(G + g_at, mask=c_ok, other=0.0).to(dt)
    count = tl.maximum(gh * gw, 1).to(dt)
    scale, inverse, finite = fixed_point_scale(AMAX, log2_count)
    channel = ACC + n * H * W * C + c
    for iy in range(0, gh):
        y_lo, y_hi, wy_lo, wy_hi, y_in = axis_sample(sh, bh, 0, iy, gh, H)
        row_lo = y_lo.to(tl.int64) * W
        row_hi = y_hi.to(tl.int64) * W
        for ix in range(0, gw):
            x_lo, x_hi, wx_lo, wx_hi, x_in = axis_sample(sw, bw, 0, ix, gw, W)
            if y_in & x_in & valid:
                add_point_gradient(channel, row_lo, row_hi, x_lo, x_hi, wy_lo, wy_hi, wx_lo,
                                   wx_hi, g, count, C, scale, c_ok)  # fmt: skip


# ----------------------------------------------------------------------------- launchers
def bezier_align_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                         aligned):  # fmt: skip
    """``out[K, C, ph, pw]`` for ``input[N, C, H, W]`` (read as NCHW), ``rois[K, 17]``."""
    sizes = input.shape
    out = input.new_empty((rois.shape[0], sizes[1], pooled_h, pooled_w))
    launch = _forward_launch(sizes, input.dtype, input.get_device(), rois.shape[0],
                             spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
                             tiles.forward_rois_inner(sampling_ratio <= 0))  # fmt: skip
    launch(input.contiguous(), rois, out)
    return out


@tiles.cached
def _forward_launch(sizes, dtype, device, K, spatial_scale, pooled_h, pooled_w,
                    sampling_ratio, aligned, rois_inner) -> Launch:  # fmt: skip
    """``bezier_align_forward``'s launch for a map of ``sizes`` (N, C, H, W) of ``dtype`` on
    ``device``, K RoIs, these parameters and settings: its tensors ``(input, rois, out)``."""
    N, C, H, W = sizes
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "bezier_align",
                                       adaptive=sampling_ratio <= 0)  # fmt: skip
    return Launch(bezier_align_forward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), sampling_ratio), PH=pooled_h,
                  PW=pooled_w, ALIGNED=aligned, BLOCK=block, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def bezier_align_backward(grad, rois, grad_input, spatial_scale, pooled_h, pooled_w,
                          sampling_ratio, aligned):  # fmt: skip
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``."""
    sums = Accumulator(grad, grad_input.shape)
    launch = _backward_launch(grad_input.shape, rois.shape[0], grad.dtype, grad.get_device(),
                              spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
                              sums.log2_count, tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, sums.amax, sums.acc)
    return sums.write_to(grad_input)


@tiles.cached
def _backward_launch(sizes, K, dtype, device, spatial_scale, pooled_h, pooled_w,
                     sampling_ratio, aligned, log2_count, rois_inner) -> Launch:  # fmt: skip
    """``bezier_align_backward``'s launch for K RoIs' gradients of ``dtype`` on ``device``
    into a map of ``sizes`` (N, C, H, W), these parameters and settings: its tensors
    ``(grad, rois, amax, acc)``."""
    N, C, H, W = sizes
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "bezier_align")
    return Launch(bezier_align_backward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), sampling_ratio, log2_count),
                  PH=pooled_h, PW=pooled_w, ALIGNED=aligned, BLOCK_C=block_c,
                  ROIS_INNER=rois_inner, num_warps=num_warps)  # fmt: skip
