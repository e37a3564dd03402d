"""Point sampling in RoIs (PointRend) in Triton: forward and a deterministic backward.

Work split as ``roiops.gpu.bezier_align``: forward, one program per (RoI, block of its
outputs: channels x points), each lane sampling its point; backward, one program per
(RoI, point, block of channels) adding the point's shares to its neighbours in the map
into the fixed-point accumulator (``roiops.gpu.fixed_point``). Arithmetic follows
``roiops.reference.roi_point_sample`` (IEEE division; compiled code may fuse a multiply
and an add, so GPU results agree with the reference to rounding, not bit for bit). A
neighbour outside the map is not read (grid_sample's zero padding).
"""

from __future__ import annotations

import triton
import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, add_to_cell, fixed_point_scale
from roiops.gpu.launch import Launch
from roiops.gpu.rois import div_rn, from_bits, load_box, scale_bits
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
def _axis(lo, hi, u, limit, scale, ALIGNED: tl.constexpr):
    """(low, w_low, low_in, w_high, high_in): along one axis, the cells ``low`` and
    ``low + 1`` around the point at ``u`` of the box edges ``lo`` to ``hi`` (image
    coordinates), their weights, and whether each is in the map (neither where the point
    is not strictly within a cell of it)."""
    dt = lo.dtype
    v = lo + u * (hi - lo)
    if ALIGNED:
        v = v * scale - 0.5
    else:
        v = div_rn(v * scale * (limit - 1).to(dt), limit)
    near = (v > -1.0) & (v < limit)
    low_f = tl.floor(tl.where(near, v, 0.0))
    f = tl.where(near, v, 0.0) - low_f
    low = low_f.to(tl.int32)
    return low, 1.0 - f, near & (low >= 0), f, near & (low + 1 < limit)


@triton.jit
def _point(ROIS, POINTS, k, p, N, H, W, SCALE_BITS, P: tl.constexpr, SHARED: tl.constexpr,
           ALIGNED: tl.constexpr):  # fmt: skip
    """(n, rows, cols, valid) of point(s) p of RoI k (``POINTS[K, P, 2]``, or ``[1, P,
    2]`` for every RoI where SHARED): its ``_axis`` along the rows and the columns. Not
    valid (n = 0): a bad batch index or a non-finite coordinate."""
    scale = from_bits(SCALE_BITS, ROIS.dtype.element_ty)
    n, x1, y1, x2, y2, valid = load_box(ROIS, k, N)
    at = POINTS + (p if SHARED else k.to(tl.int64) * P + p) * 2
    rows = _axis(y1, y2, tl.load(at + 1).to(y1.dtype), H, scale, ALIGNED)
    cols = _axis(x1, x2, tl.load(at).to(x1.dtype), W, scale, ALIGNED)
    return n, rows, cols, valid


@kernel
def roi_point_sample_forward_kernel(
    X, ROIS, POINTS, OUT, N, C, H, W, scale_bits,
    P: tl.constexpr, SHARED: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, P] from X[N, C, H, W] (NCHW), ROIS[K, 5] and POINTS[K, P, 2]; NaN for a
    RoI that is not valid."""
    k, c, p, ok = bins_tile(C, P, BLOCK, ROIS_INNER)
    n, rows, cols, valid = _point(ROIS, POINTS, k, p, N, H, W, scale_bits, P, SHARED, ALIGNED)
    y_lo, wy_lo, y_lo_in, wy_hi, y_hi_in = rows
    x_lo, wx_lo, x_lo_in, wx_hi, x_hi_in = cols
    plane = X + (n * C + c.to(tl.int64)) * H * W
    row_lo = plane + y_lo.to(tl.int64) * W
    row_hi = row_lo + W
    v1 = tl.load(row_lo + x_lo, mask=ok & y_lo_in & x_lo_in, other=0.0).to(wy_lo.dtype)
    v2 = tl.load(row_lo + x_lo + 1, mask=ok & y_lo_in & x_hi_in, other=0.0).to(wy_lo.dtype)
    v3 = tl.load(row_hi + x_lo, mask=ok & y_hi_in & x_lo_in, other=0.0).to(wy_lo.dtype)
    v4 = tl.load(row_hi + x_lo + 1, mask=ok & y_hi_in & x_hi_in, other=0.0).to(wy_lo.dtype)
    acc = (wy_lo * wx_lo) * v1 + (wy_lo * wx_hi) * v2 + (wy_hi * wx_lo) * v3 + (wy_hi * wx_hi) * v4
    acc = tl.where(valid, acc, float("nan"))
    store_bins(OUT, OUT, acc, acc, k, c, p, ok, C, P, False)


@kernel
def roi_point_sample_backward_kernel(
    G, ROIS, POINTS, AMAX, ACC, N, C, H, W, scale_bits, log2_count,
    P: tl.constexpr, SHARED: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += the gradient of one (RoI, point, block of
    channels) from G[K, C, P]: ``g * weight`` to each neighbour of the point in the map;
    nothing from a RoI that is not valid."""
    k, p, c, c_ok = bin_channels_tile(C, P, BLOCK_C, ROIS_INNER)
    n, rows, cols, valid = _point(ROIS, POINTS, k, p, N, H, W, scale_bits, P, SHARED, ALIGNED)
    y_lo, wy_lo, y_lo_in, wy_hi, y_hi_in = rows
    x_lo, wx_lo, x_lo_in, wx_hi, x_hi_in = cols
    g_at, _ = output_offsets(k, c, p, C, P)
    g = tl.load(G + g_at, mask=c_ok, other=0.0).to(wy_lo.dtype)
    scale, inverse, finite = fixed_point_scale(AMAX, log2_count)
    channel = ACC + n * H * W * C + c
    row_lo = y_lo.to(tl.int64) * W
    row_hi = row_lo + W
    # (flags combined by tl.where: Triton's interpreter splats a scalar comparison into its
    # operands' dtype, which ``&`` with a block refuses)
    ok = tl.where(valid, c_ok, False)
    add_to_cell(channel, row_lo + x_lo, C, g * (wy_lo * wx_lo), scale,
                tl.where(y_lo_in & x_lo_in, ok, False))  # fmt: skip
    add_to_cell(channel, row_lo + x_lo + 1, C, g * (wy_lo * wx_hi), scale,
                tl.where(y_lo_in & x_hi_in, ok, False))  # fmt: skip
    add_to_cell(channel, row_hi + x_lo, C, g * (wy_hi * wx_lo), scale,
                tl.where(y_hi_in & x_lo_in, ok, False))  # fmt: skip
    add_to_cell(channel, row_hi + x_lo + 1, C, g * (wy_hi * wx_hi), scale,
                tl.where(y_hi_in & x_hi_in, ok, False))  # fmt: skip


# ----------------------------------------------------------------------------- launchers
def roi_point_sample_forward(input, rois, points, spatial_scale, aligned):
    """``out[K, C, P]`` for ``input[N, C, H, W]`` (read as NCHW), ``rois[K, 5]`` and
    ``points[K, P, 2]`` (contiguous)."""
    sizes = input.shape
    out = input.new_empty((rois.shape[0], sizes[1], points.shape[1]))
    launch = _forward_launch(sizes, input.dtype, input.get_device(), rois.shape[0],
                             points.shape[1], _shared(points, rois), spatial_scale, aligned,
                             tiles.forward_rois_inner(False))  # fmt: skip
    launch(input.contiguous(), rois, points, out)
    return out


@tiles.cached
def _forward_launch(sizes, dtype, device, K, P, shared, spatial_scale, aligned,
                    rois_inner) -> Launch:  # fmt: skip
    """``roi_point_sample_forward``'s launch for a map of ``sizes`` (N, C, H, W) of
    ``dtype`` on ``device``, K RoIs of P points (``shared``: the same for every RoI),
    these parameters and settings: its tensors ``(input, rois, points, out)``."""
    N, C, H, W = sizes
    grid, block, num_warps = bins_grid(K, C, P, 1, "roi_point_sample")
    return Launch(roi_point_sample_forward_kernel, grid, (N, C, H, W, scale_bits(spatial_scale)),
                  P=P, SHARED=shared, ALIGNED=aligned, BLOCK=block, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def roi_point_sample_backward(grad, rois, points, grad_input, spatial_scale, aligned):
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, P]``."""
    sums = Accumulator(grad[..., None], grad_input.shape)
    launch = _backward_launch(grad_input.shape, rois.shape[0], points.shape[1],
                              _shared(points, rois), grad.dtype, grad.get_device(),
                              spatial_scale, aligned, sums.log2_count,
                              tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, points, sums.amax, sums.acc)
    return sums.write_to(grad_input)


@tiles.cached
def _backward_launch(sizes, K, P, shared, dtype, device, spatial_scale, aligned, log2_count,
                     rois_inner) -> Launch:  # fmt: skip
    """``roi_point_sample_backward``'s launch for K RoIs' gradients at P points of
    ``dtype`` on ``device`` into a map of ``sizes`` (N, C, H, W), these parameters and
    settings: its tensors ``(grad, rois, points, amax, acc)``."""
    N, C, H, W = sizes
    grid, block_c, num_warps = bin_channels_grid(K, C, P, 1, "roi_point_sample")
    return Launch(roi_point_sample_backward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), log2_count), P=P, SHARED=shared,
                  ALIGNED=aligned, BLOCK_C=block_c, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def _shared(points, rois) -> bool:
    """Whether ``points`` is one set for every RoI (``[1, P, 2]`` with more RoIs)."""
    return points.shape[0] == 1 and rois.shape[0] != 1
