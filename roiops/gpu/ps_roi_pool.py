"""Position-sensitive RoIPool in Triton: forward and a deterministic backward.

Quantization as ``roiops.reference.ps_roi_pool`` (torchvision's forward, bins clipped to
the last row and column), with roi_pool's rounding and bin edges
(``roiops.gpu.roi_pool``), dividing in IEEE. Forward: one program per (RoI, block of its
outputs), lane (c, p) averaging bin p of input channel ``c * PH * PW + p``. Backward:
one program per (RoI, block of its outputs), lane (p, c) adding ``grad / area`` to the
cells of bin p in the fixed-point accumulator (``roiops.gpu.fixed_point``), to each cell
or, with ``BAND`` > 0, as differences at the corners of the bin's rectangle, which the
conversion sums up. Built and tested but off, both slower on an H100: the differences
(``BAND``), and a backward by tiles (``TILES``: one program per (tile of cells, bin p,
block of output channels) sums ``grad / area`` of the RoIs whose bin p holds each cell,
in the reference's order, and writes its cells once).
"""

from __future__ import annotations

import triton.language as tl

from roiops.gpu import roi_pool, tiles
from roiops.gpu.fixed_point import (
    Accumulator,
    accumulator_channel,
    add_to_cell,
    fixed_point_scale,
)
from roiops.gpu.roi_align import input_channel
from roiops.gpu.roi_pool import (
    bin_edges,
    ps_quantized_roi,
    store_tile,
    tile_bin_channels,
    tile_cells,
    widest_bin,
)
from roiops.gpu.rois import div_rn, scale_bits
from roiops.gpu.tiles import (
    bins_grid,
    bins_tile,
    cdiv,
    check_grid,
    kernel,
    next_power_of_2,
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
# The backward by tiles (``TILES``), as roi_pool's (``roiops.gpu.roi_pool``, whose RoI
# lists and tile sizes it shares): one program per (tile, bin p, TILE_CHANNELS output
# channels: input channels ``c * PH * PW + p``) sums in registers, for each of its cells
# and channels, ``grad / area`` of the listed RoIs whose bin p holds the cell, and writes
# its cells once: none of the fixed-point passes (zeroing, max |grad|, conversion: 0.12 ms
# of the 0.28 the op took on the bench's R-FCN case on an H100 at c140be5, torchvision's
# whole backward 0.12), no atomics, the reference's bits. By instruction count (~43 RoIs
# listed a tile, the bin of ~4 of them reaching it: 126 x 49 x 2 programs of 16
# channels)
# well under 0.05 ms on that case. OFF: timed on an H100 (5b130dd), 0.62 ms (0.49 with
# 32 channels a program) against the scatter's 0.18-0.25.
TILES = False
TILE_CHANNELS = 16
TILE_WARPS = 4


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


@kernel
def ps_roi_pool_tile_backward_kernel(
    G, ROIS, LISTS, COUNTS, GX, N, C, H, W, K, scale_bits,
    stride_n, stride_c, stride_h, stride_w,
    PH: tl.constexpr, PW: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    """GX[n, c * PH * PW + p, h, w] (any strides) = the sum of ``grad[k, c, p] / area``
    over the RoIs k of the tile's list (``roi_pool_tile_lists_kernel`` with PS) whose bin
    p holds cell (h, w), in ascending order: the reference's additions in its order. One
    program per (tile, bin p, block of BLOCK_C output channels), whose input channels all
    take bin p: its edges are the same for every lane, and a RoI whose bin p misses the
    tile costs its geometry alone; a [channels, cells] tile summed in registers and
    written once."""
    P: tl.constexpr = PH * PW
    tile, p, c, c_ok = tile_bin_channels(C, P, BLOCK_C)
    n, top, left, h, w, in_map = tile_cells(tile, H, W, TILE_H, TILE_W)
    dt = ROIS.dtype.element_ty
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), dt)
    for j in range(0, tl.load(COUNTS + tile)):
        k = tl.load(LISTS + tl.cast(tile, tl.int64) * K + j)
        _, start_h, start_w, roi_h, roi_w, _ = ps_quantized_roi(ROIS, k, N, scale_bits)
        # bin p, clipped to the last row and column as the forward's
        h0, h1 = bin_edges(start_h, roi_h, p // PW, PH, H - 1, dt)
        w0, w1 = bin_edges(start_w, roi_w, p % PW, PW, W - 1, dt)
        if (h0 < top + TILE_H) & (h1 > top) & (w0 < left + TILE_W) & (w1 > left):
            at = (tl.cast(k, tl.int64) * C + c) * P + p
            g = tl.load(G + at, mask=c_ok, other=0.0).to(dt)
            share = div_rn(g, tl.maximum((h1 - h0) * (w1 - w0), 1).to(dt))  # (0: an empty bin)
            holds = (h >= h0) & (h < h1) & (w >= w0) & (w < w1)
            acc = tl.where(holds[None, :], acc + share[:, None], acc)
    c_in = c.to(tl.int64) * P + p
    store_tile(GX, acc, n, c_in, h, w, c_ok, in_map, stride_n, stride_c, stride_h, stride_w)


# ----------------------------------------------------------------------------- launchers
def ps_roi_pool_forward(input, rois, spatial_scale, pooled_h, pooled_w):
    """``out[K, C // (ph * pw), ph, pw]`` for ``input[N, C, H, W]`` (read as NCHW)."""
    K = rois.shape[0]
    N, C_in, H, W = input.shape
    C = C_in // (pooled_h * pooled_w)
    out = input.new_empty((K, C, pooled_h, pooled_w))
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "ps_roi_pool")
    ps_roi_pool_forward_kernel[grid](
        input.contiguous(), rois, out, N, C, H, W, scale_bits(spatial_scale),
        PH=pooled_h, PW=pooled_w, BLOCK=block,
        ROIS_INNER=tiles.GATHER_ROIS_INNER, num_warps=num_warps,
    )  # fmt: skip
    return out


def ps_roi_pool_backward(grad, rois, grad_input, spatial_scale):
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``: by
    tiles (``TILES``, where the tiles' RoI lists fit ``roi_pool.GATHER_LIST_LIMIT``), else
    by the fixed-point scatter."""
    N, C_in, H, W = grad_input.shape
    K, C, pooled_h, pooled_w = grad.shape
    tiles = roi_pool.tile_count(N, H, W)
    if TILES and tiles * K <= roi_pool.GATHER_LIST_LIMIT:
        if tiles == 0:
            return grad_input
        bits = scale_bits(spatial_scale)
        lists, counts = roi_pool.pool_tile_lists(rois, N, H, W, tiles, bits, pooled_h,
                                                 pooled_w, ps=True, op="ps_roi_pool")  # fmt: skip
        mode = dict(PH=pooled_h, PW=pooled_w, TILE_H=roi_pool.GATHER_TILE_H,
                    TILE_W=roi_pool.GATHER_TILE_W)  # fmt: skip
        block_c = min(TILE_CHANNELS, next_power_of_2(C))
        programs = tiles * pooled_h * pooled_w * cdiv(C, block_c)
        ps_roi_pool_tile_backward_kernel[check_grid(programs, "ps_roi_pool")](
            grad.contiguous(), rois, lists, counts, grad_input, N, C, H, W, K, bits,
            *grad_input.stride(), **mode, BLOCK_C=block_c, num_warps=TILE_WARPS,
        )  # fmt: skip
        return grad_input
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
    grid, block, num_warps = roi_outputs_grid(K, C * pooled_h * pooled_w, "ps_roi_pool")
    ps_roi_pool_backward_kernel[grid](
        grad.contiguous(), rois, sums.amax, sums.acc, N, C, H, W, scale_bits(spatial_scale),
        sums.log2_count, PH=pooled_h, PW=pooled_w, BLOCK=block,
        ROIS_INNER=tiles.SCATTER_ROIS_INNER, BAND=sums.band, num_warps=num_warps,
    )  # fmt: skip
