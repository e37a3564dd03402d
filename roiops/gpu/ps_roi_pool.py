"""Position-sensitive RoIPool in Triton: forward and a deterministic backward.

Quantization as ``roiops.reference.ps_roi_pool`` (torchvision's forward, bins clipped to
the last row and column), with roi_pool's rounding and bin edges
(``roiops.gpu.roi_pool``), dividing in IEEE. Forward: one program per (RoI, block of its
outputs), lane (c, p) averaging bin p of input channel ``c * PH * PW + p``. Backward:
one program per (RoI, block of its outputs), lane (p, c) adding ``grad / area`` to the
cells of bin p in the fixed-point accumulator (``roiops.gpu.fixed_point``), to each cell
or, with ``BAND`` > 0, as differences at the corners of the bin's rectangle, which the
conversion sums up (off: slower on an H100). (A backward by tiles, one program per
tile of cells, bin p and block of output channels summing ``grad / area`` of the RoIs
whose bin p holds each cell, was built and measured on an H100 at 5b130dd: 0.62 ms on
the bench's R-FCN case against this scatter's 0.18; removed.)
"""

from __future__ import annotations

import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.fixed_point import (
    Accumulator,
    accumulator_channel,
    add_to_cell,
    fixed_point_scale,
)
from roiops.gpu.launch import Launch
from roiops.gpu.roi_align import input_channel
from roiops.gpu.roi_pool import (
    bin_edges,
    ps_quantized_roi,
    widest_bin,
)
from roiops.gpu.rois import div_rn, scale_bits
from roiops.gpu.tiles import (
    bins_grid,
    bins_tile,
    kernel,
    output_offsets,
    roi_outputs_grid,
    roi_outputs_tile,
    store_bins,
)

# The backward's scatter adds a bin's value to its cells as differences
# (``Accumulator(band=BAND)``): at most 4 atomics per band of BAND rows the bin crosses,
# instead of one per cell (a bin of 3x4 cells: 4 instead of 12; 4.28 instead of 10.25 a
# bin on average over the R-FCN boxes of `roiops bench --device cuda`); the conversion then
# adds up each band's rows one after the other. 0: one atomic per cell, the fastest on an
# H100 (5b130dd, the bench's R-FCN case, the op: 0.18 ms; bands of 1, 8 and 16 rows
# 0.22, 0.25 and 0.28: the bands' conversion, 0.12-0.18 ms against 0.06, costs more than
# the atomics save; torchvision 0.13).
BAND = 0


@kernel
def ps_roi_pool_forward_kernel(
    X, ROIS, OUT, N, C, H, W, scale_bits,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] from X[N, C * PH * PW, H, W]."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    n, start_h, start_w, roi_h, roi_w, valid = ps_quantized_roi(ROIS, k, N, scale_bits)
    dt = ROIS.dtype.element_ty
    # torchvision's forward clips to the last index
    h0, h1 = bin_edges(start_h, roi_h, p // PW, PH, H - 1, dt)
    w0, w1 = bin_edges(start_w, roi_w, p % PW, PW, W - 1, dt)
    c_in, C_in = input_channel(c, p, C, PH * PW, True)
    plane = X + (n * C_in + c_in.to(tl.int64)) * H * W
    acc_dtype = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK,), acc_dtype)
    span_h, span_w = widest_bin(h0, h1, w0, w1, tl.where(valid, ok, False))
    for dh in range(0, span_h):
        for dw in range(0, span_w):
            h = h0 + dh
            w = w0 + dw
            inside = (h < h1) & (w < w1) & ok
            acc += tl.load(plane + h * W + w, mask=inside, other=0.0).to(acc_dtype)
    empty = (h1 <= h0) | (w1 <= w0)
    area = tl.maximum((h1 - h0) * (w1 - w0), 1).to(acc_dtype)
    value = tl.where(empty, 0.0, div_rn(acc, area))
    value = tl.where(valid, value, float("nan"))
    store_bins(OUT, OUT, value, value, k, c, p, ok, C, PH * PW, False)


@kernel
def ps_roi_pool_backward_kernel(
    G, ROIS, AMAX, ACC, N, C, H, W, scale_bits, log2_count,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False, BAND: tl.constexpr = 0,
):  # fmt: skip
    """ACC[N, H, W, C * PH * PW] (int64 fixed point) += grad / area over the cells of
    each bin, for a block of BLOCK of one RoI's outputs, lane (p, c) bin p of output
    channel c, channels innermost (their accumulator channels ``p * C + c`` lie side by
    side). With BAND > 0 as differences (``Accumulator(band=BAND)``): the bin's
    rectangle cut at the bands of BAND rows, each piece by its corners, + at its top
    left, - at its top right, and where the piece ends inside its band - at its bottom
    left and + at its bottom right (corners past the map's last row or column are left
    out: no cell sums them); with BAND 0 to each of its cells."""
    P: tl.constexpr = PH * PW
    k, p, c, ok = roi_outputs_tile(C, P, BLOCK, ROIS_INNER)
    n, start_h, start_w, roi_h, roi_w, valid = ps_quantized_roi(ROIS, k, N, scale_bits)
    dt = ROIS.dtype.element_ty
    h0, h1 = bin_edges(start_h, roi_h, p // PW, PH, H - 1, dt)
    w0, w1 = bin_edges(start_w, roi_w, p % PW, PW, W - 1, dt)
    h1 = tl.where(valid, h1, h0)  # an invalid RoI sends nothing
    g_at, _ = output_offsets(k, c, p, C, P)
    g = tl.load(G + g_at, mask=ok, other=0.0).to(dt)
    share = div_rn(g, tl.maximum((h1 - h0) * (w1 - w0), 1).to(dt))
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    c_acc, C_acc = accumulator_channel(c, p, C, P, True)
    channel = ACC + n * H * W * C_acc + c_acc
    # the tallest (widest) bin spans at most ceil(size / pooled) + 1 rows (columns), and
    # the clipped bins at most the map (an invalid RoI's none)
    tallest = tl.where(valid, tl.minimum(tl.cdiv(roi_h, PH) + 1, H), 0)
    if BAND == 0:
        widest = tl.where(valid, tl.minimum(tl.cdiv(roi_w, PW) + 1, W), 0)
        for dh in range(0, tallest):
            for dw in range(0, widest):
                h = h0 + dh
                w = w0 + dw
                inside = ok & (h < h1) & (w < w1)
                add_to_cell(channel, tl.cast(h * W + w, tl.int64), C_acc, share, scale, inside)
    else:
        right = ok & (w1 < W)
        first = h0 // BAND
        pieces = tl.where((h1 > h0) & (w1 > w0), tl.cdiv(h1, BAND) - first, 0)  # 0: empty
        for i in range(0, tl.cdiv(tallest, BAND) + 1):
            band = first + i
            top = tl.maximum(h0, band * BAND)
            bottom = tl.minimum(h1, band * BAND + BAND)
            ends = bottom < tl.minimum(band * BAND + BAND, H)
            piece = i < pieces
            at = tl.cast(top * W, tl.int64)
            add_to_cell(channel, at + w0, C_acc, share, scale, ok & piece)
            add_to_cell(channel, at + w1, C_acc, -share, scale, right & piece)
            at = tl.cast(bottom * W, tl.int64)
            add_to_cell(channel, at + w0, C_acc, -share, scale, ok & piece & ends)
            add_to_cell(channel, at + w1, C_acc, share, scale, right & piece & ends)


# ----------------------------------------------------------------------------- launchers
def ps_roi_pool_forward(input, rois, spatial_scale, pooled_h, pooled_w):
    """``out[K, C // (ph * pw), ph, pw]`` for ``input[N, C, H, W]`` (read as NCHW)."""
    K = rois.shape[0]
    sizes = input.shape
    out = input.new_empty((K, sizes[1] // (pooled_h * pooled_w), pooled_h, pooled_w))
    launch = _forward_launch(sizes, input.dtype, input.get_device(), K, spatial_scale,
                             pooled_h, pooled_w, tiles.GATHER_ROIS_INNER)  # fmt: skip
    launch(input.contiguous(), rois, out)
    return out


@tiles.cached
def _forward_launch(sizes, dtype, device, K, spatial_scale, pooled_h, pooled_w,
                    rois_inner) -> Launch:  # fmt: skip
    """``ps_roi_pool_forward``'s launch for a map of ``sizes`` (N, C, H, W) of ``dtype`` on
    ``device`` (those two keep apart the launches of different tensors), K RoIs, these
    parameters and settings: its tensors ``(input, rois, out)``."""
    N, C_in, H, W = sizes
    C = C_in // (pooled_h * pooled_w)
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "ps_roi_pool")
    return Launch(ps_roi_pool_forward_kernel, grid, (N, C, H, W, scale_bits(spatial_scale)),
                  PH=pooled_h, PW=pooled_w, BLOCK=block, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def ps_roi_pool_backward(grad, rois, grad_input, spatial_scale):
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``: the
    fixed-point scatter, then the conversion."""
    band = BAND if Accumulator.takes_bands(grad_input.shape) else 0
    sums = Accumulator(grad, grad_input.shape, bins=grad.shape[2] * grad.shape[3], band=band)
    ps_roi_pool_scatter(sums, grad, rois, spatial_scale)
    return sums.write_to(grad_input)


def ps_roi_pool_scatter(sums: Accumulator, grad, rois, spatial_scale):
    """Add the contributions of ``grad[K, C, ph, pw]`` into ``sums.acc`` (its channels bin
    by bin, ``Accumulator(bins=ph * pw)``; as differences if ``sums.band``)."""
    N, H, W = sums.acc.shape[:3]
    K, C, pooled_h, pooled_w = grad.shape
    assert sums.bins == pooled_h * pooled_w, "a position-sensitive sum goes bin by bin"
    launch = _scatter_launch(K, C, N, H, W, grad.dtype, grad.get_device(), spatial_scale,
                             pooled_h, pooled_w, sums.log2_count, sums.band,
                             tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, sums.amax, sums.acc)


@tiles.cached
def _scatter_launch(K, C, N, H, W, dtype, device, spatial_scale, pooled_h, pooled_w,
                    log2_count, band, rois_inner) -> Launch:  # fmt: skip
    """``ps_roi_pool_scatter``'s launch for ``grad[K, C, ph, pw]`` of ``dtype`` on
    ``device`` into an accumulator of N images of H x W cells (in bands of ``band`` rows,
    0: none), these parameters and settings: its tensors ``(grad, rois, amax, acc)``."""
    grid, block, num_warps = roi_outputs_grid(K, C * pooled_h * pooled_w, "ps_roi_pool")
    return Launch(ps_roi_pool_backward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), log2_count), PH=pooled_h,
                  PW=pooled_w, BLOCK=block, ROIS_INNER=rois_inner, BAND=band,
                  num_warps=num_warps)  # fmt: skip
