"""RoIPool in Triton: forward (max + argmax) and a deterministic backward.

The forward runs one program per (RoI, block of its outputs), as
``roiops.gpu.roi_align``'s. The backward scatters: one program per (RoI, block of
channels) over all of the RoI's bins (``roiops.gpu.tiles``) adds each output's gradient
to its argmax cell in the fixed-point accumulator of ``roiops.gpu.fixed_point`` (one
int64 atomic per output), the same bits on every run. A backward by tiles
(``GATHER_BACKWARD``: one program per (tile of cells, block of channels) sums, cell by
cell, the gradients of the outputs whose argmax the cell is, in the reference's order, so
the reference's bits) is built and tested but off: on an H100 it was 1.5-2.5x slower
than the scatter. Quantization follows
``roiops.reference.roi_pool``; the bin edges ``floor(p * size / pooled)`` and
``ceil((p + 1) * size / pooled)`` divide in IEEE, as torchvision's CUDA kernel does, so
the bins, the forward and the argmax are torchvision's bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from roiops._layout import new_argmax, readable_argmax
from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, add_to_cell, fixed_point_scale
from roiops.gpu.rois import batch_index, div_rn, load_roi, scale_bits
from roiops.gpu.tiles import (
    bin_channels_grid,
    bin_channels_tile,
    bins_grid,
    bins_tile,
    cdiv,
    check_grid,
    is_channels_last,
    kernel,
    next_power_of_2,
    output_offsets,
    roi_channels_grid,
    roi_channels_tile,
    store_bins,
)

# bins start from -FLT_MAX, as in torchvision and the reference
FLT_LOWEST = tl.constexpr(-3.4028234663852886e38)

# The backward by tiles (``GATHER_BACKWARD``): a first kernel lists, for each tile of
# GATHER_TILE_H x GATHER_TILE_W cells, the RoIs whose bins reach it (one program per tile,
# GATHER_LIST_BLOCK RoIs at a time, in ascending order); then one program per (tile,
# block of channels) owns those cells of the gradient and writes them: no fixed-point
# accumulator to zero and convert (20 bytes a cell and channel of memory traffic, ~0.2 ms
# on the bench's 'a small' map, as much as torchvision's whole backward there), no
# atomics, no max |grad| pass, and the reference's order of additions (RoIs ascending, a
# RoI's bins row-major), so the same bits as the reference and the CPU kernels.
# GATHER_LANES "channels" (``roi_pool_tile_backward_kernel``, TILE_CHANNELS a program, a
# thread each): the program zeroes its cells, visits the bins that reach the tile, and each
# lane adds its channel's gradient to the argmax cell where the tile holds it (a load and
# a store; one lane owns a cell and channel): work per bin visited, not per cell. "cells"
# (``roi_pool_gather_backward_kernel``, GATHER_CHANNELS x the tile's cells on
# GATHER_WARPS warps): each lane looks up its cell's bins and compares their argmax with
# it: work per cell, RoI and bin over the cell, which on the bench's 'b' case (some 25
# RoIs over a cell) counts to ~1 ms of instructions, above the scatter's 0.7. By
# instruction and latency counts the lanes over channels take ~0.1 ms on 'a small' and
# ~0.3 on 'b' (torchvision 0.22 and 0.45), bound by each bin's chain of loads, add and
# store (the argmax is loaded a bin ahead). The lists take ``tiles * K`` int32; above
# GATHER_LIST_LIMIT entries the scatter runs. OFF: timed on an H100 (5b130dd, the op, ms,
# 'a small' / 'b'), the tiles took 1.39 / 1.17, with 32 channels 1.11 / 1.01, tiles of
# 4x16 1.23 / 1.03, lanes over cells 0.51 / 4.21, against the scatter's 0.56 / 0.79
# (torchvision 0.26 / 0.49): those counts were 5-10x short of the time.
GATHER_BACKWARD = False
GATHER_LANES = "channels"
TILE_CHANNELS = 128
# The lanes over channels read the argmax as the forward wrote it (channel-major from the
# NCHW forward, [K, C, P]: each lane's loads a bin apart, as its loads of G [K, C, P]
# already are), rather than a channels-last copy made first (``argmax.contiguous()``: a
# read and a write of K x C x P int32, 51 MB and ~0.03 ms by bandwidth on the bench's 'a
# small'). The same DRAM bytes either way when a lane's next bins stay in L1 (the program
# visits a RoI's bins in order, 128 lanes x a 32-byte sector); more L1 requests a load.
# Off: timed on an H100 (5b130dd), the tiles took 1.39 / 1.17 ms ('a small' / 'b')
# reading it as it lies, 0.88 / 0.87 with the copy first (the L1 requests cost more than
# the copy's bytes); the scatter 0.56 / 0.79.
TILE_ARGMAX_AS_IT_LIES = False
GATHER_TILE_H = 8
GATHER_TILE_W = 8
GATHER_CHANNELS = 16
GATHER_WARPS = 4
GATHER_LIST_BLOCK = 256
GATHER_LIST_LIMIT = 2**24


@triton.jit
def round_half_away(v):
    """C's round(): halves away from zero."""
    a = tl.abs(v)
    r = tl.floor(a)
    r = tl.where(a - r >= 0.5, r + 1.0, r)
    return tl.where(v < 0, -r, r).to(tl.int32)


@triton.jit
def _quantized_roi(ROIS, k, N, SCALE_BITS):
    """(n, start_h, start_w, height, width, valid) in whole cells, end cell inclusive."""
    n, x1, y1, x2, y2, valid = load_roi(ROIS, k, N, SCALE_BITS)
    start_w = round_half_away(x1)
    start_h = round_half_away(y1)
    end_w = round_half_away(x2)
    end_h = round_half_away(y2)
    height = tl.maximum(end_h - start_h + 1, 1)
    width = tl.maximum(end_w - start_w + 1, 1)
    return n, start_h, start_w, height, width, valid


@triton.jit
def ps_quantized_roi(ROIS, k, N, SCALE_BITS):
    """Position-sensitive pooling's (n, start_h, start_w, height, width, valid) in whole
    cells, end exclusive (``roiops.reference.ps_roi_pool``)."""
    n, x1, y1, x2, y2, valid = load_roi(ROIS, k, N, SCALE_BITS)
    start_w = round_half_away(x1)
    start_h = round_half_away(y1)
    height = tl.maximum(round_half_away(y2) - start_h, 1)
    width = tl.maximum(round_half_away(x2) - start_w, 1)
    return n, start_h, start_w, height, width, valid


@triton.jit
def bin_start(p, bin_size):
    """First cell of bins p along one axis, from the RoI's first cell: floor(p * size)."""
    return tl.floor(p.to(bin_size.dtype) * bin_size).to(tl.int32)


@triton.jit
def bin_end(p, bin_size):
    """One past the last cell of bins p, from the RoI's first cell: ceil((p + 1) * size)."""
    return tl.ceil((p + 1).to(bin_size.dtype) * bin_size).to(tl.int32)


@triton.jit
def bin_edges(roi_start, roi_size, p, POOLED: tl.constexpr, limit, DT: tl.constexpr):
    """Cell range [start, end) of bins p along one axis, clipped to [0, limit]."""
    bin_size = div_rn(roi_size.to(DT), POOLED)
    start = bin_start(p, bin_size) + roi_start
    end = bin_end(p, bin_size) + roi_start
    return tl.minimum(tl.maximum(start, 0), limit), tl.minimum(tl.maximum(end, 0), limit)


@triton.jit
def widest_bin(h0, h1, w0, w1, visits):
    """(rows, columns): the most cells along each axis of the (clipped) bins of the lanes
    that ``visits``: the loops of a program that visits its lanes' bins cell by cell. A
    bin clipped away (a box beyond the map) adds none, an invalid RoI's lanes none."""
    rows = tl.max(tl.where(visits, h1 - h0, 0), axis=0)
    return rows, tl.max(tl.where(visits, w1 - w0, 0), axis=0)


@kernel
def roi_pool_forward_kernel(
    X, ROIS, OUT, ARGMAX, N, C, H, W, scale_bits,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr, STORE_ARGMAX: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] and (STORE_ARGMAX) ARGMAX[K, PH, PW, C] (cell h * W + w, or -1;
    channel-major) from X[N, C, H, W]."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    pool_bins(X, ROIS, OUT, ARGMAX, k, c, p, ok, N, C, H, W, scale_bits, True, PH, PW, BLOCK,
              STORE_ARGMAX)  # fmt: skip


@triton.jit
def pool_bins(X, ROIS, OUT, ARGMAX, k, c, p, ok, N, C, H, W, scale_bits, usable,
              PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr,
              STORE_ARGMAX: tl.constexpr):  # fmt: skip
    """RoI k's outputs (c, p) from NCHW X: the body of ``roi_pool_forward_kernel``,
    shared with the FPN pooler's; a RoI that is not ``usable`` is invalid."""
    n, start_h, start_w, roi_h, roi_w, valid = _quantized_roi(ROIS, k, N, scale_bits)
    valid = valid & usable
    h0, h1 = bin_edges(start_h, roi_h, p // PW, PH, H, ROIS.dtype.element_ty)
    w0, w1 = bin_edges(start_w, roi_w, p % PW, PW, W, ROIS.dtype.element_ty)
    plane = X + (n * C + c.to(tl.int64)) * H * W
    # compared in float32 (float64 for float64 maps), as the reference does for halves
    acc_dtype = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    best = tl.full((BLOCK,), FLT_LOWEST, acc_dtype)
    best_at = tl.full((BLOCK,), -1, tl.int32)
    span_h, span_w = widest_bin(h0, h1, w0, w1, tl.where(valid, ok, False))
    for dh in range(0, span_h):
        for dw in range(0, span_w):
            h = h0 + dh
            w = w0 + dw
            inside = (h < h1) & (w < w1) & ok
            cell = h * W + w
            v = tl.load(plane + cell, mask=inside, other=0.0).to(best.dtype)
            # row-major visit and strict >: the first maximum wins, as in the reference
            wins = inside & (v > best)
            best = tl.where(wins, v, best)
            best_at = tl.where(wins, cell, best_at)
    empty = (h1 <= h0) | (w1 <= w0)
    # (lanes past the last channel are zeroed too: -FLT_MAX would overflow a half cast)
    best = tl.where(empty | ~ok, 0.0, best)
    # an invalid RoI's outputs are NaN: visible, not silently zero
    best = tl.where(valid, best, float("nan"))
    store_bins(OUT, ARGMAX, best, best_at, k, c, p, ok, C, PH * PW, STORE_ARGMAX)


@kernel
def roi_pool_forward_nhwc_kernel(
    X, ROIS, OUT, ARGMAX, N, C, H, W, scale_bits,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK_C: tl.constexpr, STORE_ARGMAX: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """As ``roi_pool_forward_kernel`` from channels-last X[N, H, W, C] (the argmax
    channels last): one program per (RoI, bin, block of channels) visits the bin's cells
    in scalars, each cell one contiguous load of the channels."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    n, start_h, start_w, roi_h, roi_w, valid = _quantized_roi(ROIS, k, N, scale_bits)
    h0, h1 = bin_edges(start_h, roi_h, p // PW, PH, H, ROIS.dtype.element_ty)
    w0, w1 = bin_edges(start_w, roi_w, p % PW, PW, W, ROIS.dtype.element_ty)
    h1 = tl.where(valid, h1, h0)  # an invalid RoI visits no cell
    image = X + n * H * W * C + c
    acc_dtype = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    best = tl.full((BLOCK_C,), FLT_LOWEST, acc_dtype)
    best_at = tl.full((BLOCK_C,), -1, tl.int32)
    for h in range(h0, h1):
        for w in range(w0, w1):
            cell = h * W + w
            v = tl.load(image + tl.cast(cell, tl.int64) * C, mask=c_ok, other=0.0).to(best.dtype)
            # row-major visit and strict >: the first maximum wins, as in the reference
            wins = v > best
            best = tl.where(wins, v, best)
            best_at = tl.where(wins, cell, best_at)
    empty = (h1 <= h0) | (w1 <= w0)
    best = tl.where(empty, 0.0, best)
    best = tl.where(valid, best, float("nan"))
    store_bins(OUT, ARGMAX, best, best_at, k, c, p, c_ok, C, PH * PW, STORE_ARGMAX, False)


@triton.jit
def _bins_before(r, bin_size, POOLED: tl.constexpr, BITS: tl.constexpr, ENDS: tl.constexpr):
    """How many of the bins 0..POOLED-1 along one axis have their end (ENDS) or their start
    at or before cell ``r`` (counted from the RoI's first cell): ``bin_end(p) <= r`` or
    ``bin_start(p) <= r``, both nondecreasing in p, by binary search over the BITS bits of
    POOLED; the forward's arithmetic, so exact for any value."""
    count = tl.zeros_like(r)
    for b in tl.static_range(BITS - 1, -1, -1):
        t = count + (1 << b)
        edge = bin_end(t - 1, bin_size) if ENDS else bin_start(t - 1, bin_size)
        count = tl.where((t <= POOLED) & (edge <= r), t, count)
    return count


@triton.jit
def _bins_over(cells, roi_start, roi_size, POOLED: tl.constexpr, BITS: tl.constexpr,
               DT: tl.constexpr):  # fmt: skip
    """(first, stop): the bins along one axis that hold each of ``cells`` are
    ``first <= p < stop`` (none where stop <= first), as the forward's edges say."""
    bin_size = div_rn(roi_size.to(DT), POOLED)
    r = cells - roi_start
    first = _bins_before(r, bin_size, POOLED, BITS, True)
    stop = _bins_before(r, bin_size, POOLED, BITS, False)
    return first, stop


@kernel
def roi_pool_tile_lists_kernel(
    ROIS, LISTS, COUNTS, N, H, W, K, scale_bits,
    PH: tl.constexpr, PW: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_K: tl.constexpr, PS: tl.constexpr = False,
):  # fmt: skip
    """For tile t of TILE_H x TILE_W cells (tiles numbered image by image, row by row),
    ``LISTS[t, :COUNTS[t]]``: the valid RoIs whose bins reach a cell of the tile, in
    ascending order (``LISTS[t]`` holds K entries); RoIs quantized as roi_pool's, or
    with PS as position-sensitive pooling's. One program per tile."""
    tile = tl.program_id(0)
    n, h0, w0 = tile_origin(tile, H, W, TILE_H, TILE_W)
    count = tl.sum(tl.zeros((BLOCK_K,), tl.int32), axis=0)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        if PS:
            rn, start_h, start_w, roi_h, roi_w, valid = ps_quantized_roi(
                ROIS, tl.where(k_ok, k, 0), N, scale_bits
            )
        else:
            rn, start_h, start_w, roi_h, roi_w, valid = _quantized_roi(
                ROIS, tl.where(k_ok, k, 0), N, scale_bits
            )
        DT = ROIS.dtype.element_ty
        # the bins of a RoI cover [start, start + bin_end(last)) along each axis
        last = tl.zeros_like(roi_h) + (PH - 1)
        end_h = start_h + bin_end(last, div_rn(roi_h.to(DT), PH))
        last = tl.zeros_like(roi_w) + (PW - 1)
        end_w = start_w + bin_end(last, div_rn(roi_w.to(DT), PW))
        hit = k_ok & valid & (rn == n) & (start_h < h0 + TILE_H) & (end_h > h0)
        hit = hit & (start_w < w0 + TILE_W) & (end_w > w0)
        count = list_hits(LISTS, tile, K, k, hit, count)
    tl.store(COUNTS + tile, count)


@triton.jit
def tile_origin(tile, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """(n, top, left): the image and first cell of tile ``tile`` (tiles of TILE_H x TILE_W
    cells, numbered image by image, row by row)."""
    tiles_w = tl.cdiv(W, TILE_W)
    tiles_h = tl.cdiv(H, TILE_H)
    return (
        tile // (tiles_h * tiles_w),
        (tile // tiles_w % tiles_h) * TILE_H,
        (tile % tiles_w) * TILE_W,
    )


@triton.jit
def tile_cells(tile, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """(n, top, left, h, w, in_map): ``tile_origin`` and the row and column of each of
    the tile's cells, row by row, and whether it lies in the map (a tile at the map's
    bottom or right edge is partial)."""
    n, top, left = tile_origin(tile, H, W, TILE_H, TILE_W)
    i = tl.arange(0, TILE_H * TILE_W)
    h = top + i // TILE_W
    w = left + i % TILE_W
    return n, top, left, h, w, (h < H) & (w < W)


@triton.jit
def tile_bin_channels(C, P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(tile, p, c, c_ok): this program's tile, bin and output channels, one program per
    (tile, bin p of P, block of BLOCK_C output channels), tiles outermost (the
    position-sensitive backwards by tiles)."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    tile = tl.program_id(0) // (P * c_blocks)
    p = tl.program_id(0) // c_blocks % P
    c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    return tile, p, c, c < C


@triton.jit
def store_tile(GX, values, n, c, h, w, c_ok, in_map, stride_n, stride_c, stride_h, stride_w):
    """GX[n, c, h, w] = values (any strides, int64 offsets) over a [channels, cells] tile."""
    at = (tl.cast(n, tl.int64) * stride_n + c.to(tl.int64)[:, None] * stride_c
          + h.to(tl.int64)[None, :] * stride_h + w.to(tl.int64)[None, :] * stride_w)  # fmt: skip
    tl.store(GX + at, values.to(GX.dtype.element_ty), mask=c_ok[:, None] & in_map[None, :])


@triton.jit
def list_hits(LISTS, tile, K, k, hit, count):
    """Append the RoIs ``k`` that ``hit`` the tile to its list (``LISTS[tile]``, holding
    ``count`` of K entries), in order; the new count."""
    hits = hit.to(tl.int32)
    at = tl.cumsum(hits, axis=0) - 1 + count
    tl.store(LISTS + tl.cast(tile, tl.int64) * K + at, k, mask=hit)
    return count + tl.sum(hits, axis=0)


@kernel
def roi_pool_tile_backward_kernel(
    G, ARGMAX, ROIS, LISTS, COUNTS, GX, N, C, H, W, K, scale_bits,
    stride_n, stride_c, stride_h, stride_w,
    PH: tl.constexpr, PW: tl.constexpr, PH_BITS: tl.constexpr, PW_BITS: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ARGMAX_CM: tl.constexpr,
):  # fmt: skip
    """``roi_pool_gather_backward_kernel``'s sums with lanes over channels: the program
    owns its tile's cells of BLOCK_C channels in GX (float32 or float64: the sums are
    made there), zeroes them, then visits, RoI by RoI of the tile's list, the bins that
    reach the tile, row-major, and each lane adds its channel's output gradient to the
    argmax cell where that cell is in the tile (a load and a store: no other thread
    writes that cell and channel). G is [K, C, P]; ARGMAX [K, P, C] lies channel-major
    if ARGMAX_CM (as the NCHW forward writes it: a lane's loads a bin apart, as G's, the
    next bins' in the same sector), else channels last (a lane's load contiguous with its
    neighbours')."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    tile = tl.program_id(0) // c_blocks
    n, h0, w0 = tile_origin(tile, H, W, TILE_H, TILE_W)
    c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    planes = GX + tl.cast(n, tl.int64) * stride_n + c.to(tl.int64) * stride_c
    # the tile's cells zeroed a row at a time, along the row, then the barrier: the lanes
    # that add into a cell are not those that zeroed it
    cols = w0 + tl.arange(0, TILE_W)
    zero = tl.zeros((BLOCK_C, TILE_W), GX.dtype.element_ty)
    in_row = c_ok[:, None] & (cols < W)[None, :]
    for row in range(h0, tl.minimum(h0 + TILE_H, H)):
        at = tl.cast(row, tl.int64) * stride_h + cols.to(tl.int64) * stride_w
        tl.store(planes[:, None] + at[None, :], zero, mask=in_row)
    tl.debug_barrier()
    DT = ROIS.dtype.element_ty
    for j in range(0, tl.load(COUNTS + tile)):
        k = tl.load(LISTS + tl.cast(tile, tl.int64) * K + j)
        _, start_h, start_w, roi_h, roi_w, _ = _quantized_roi(ROIS, k, N, scale_bits)
        # the bins whose cells reach the tile's rows and columns
        ph0, _ = _bins_over(h0, start_h, roi_h, PH, PH_BITS, DT)
        _, ph1 = _bins_over(h0 + TILE_H - 1, start_h, roi_h, PH, PH_BITS, DT)
        pw0, _ = _bins_over(w0, start_w, roi_w, PW, PW_BITS, DT)
        _, pw1 = _bins_over(w0 + TILE_W - 1, start_w, roi_w, PW, PW_BITS, DT)
        roi_g = G + (tl.cast(k, tl.int64) * C + c) * (PH * PW)
        # a bin's argmax at roi_argmax + p * bin_step
        if ARGMAX_CM:
            roi_argmax = ARGMAX + (tl.cast(k, tl.int64) * C + c) * (PH * PW)
            bin_step = 1
        else:
            roi_argmax = ARGMAX + tl.cast(k, tl.int64) * (PH * PW) * C + c
            bin_step = C
        # the bins row-major, each one's argmax loaded a bin ahead (the adds into the
        # gradient wait on their loads: the next argmax load need not)
        row_bins = tl.maximum(pw1 - pw0, 0)
        bins = tl.maximum(ph1 - ph0, 0) * row_bins
        p = ph0 * PW + pw0
        cell = tl.load(roi_argmax + tl.cast(p, tl.int64) * bin_step, mask=c_ok & (bins > 0),
                       other=-1)  # fmt: skip
        for q in range(0, bins):
            ahead = q + 1
            p_ahead = (ph0 + ahead // row_bins) * PW + pw0 + ahead % row_bins
            cell_ahead = tl.load(roi_argmax + tl.cast(p_ahead, tl.int64) * bin_step,
                                 mask=c_ok & (ahead < bins), other=-1)  # fmt: skip
            h = cell // W
            w = cell - h * W
            mine = c_ok & (cell >= 0) & (h >= h0) & (h < h0 + TILE_H) & (h < H)
            mine = mine & (w >= w0) & (w < w0 + TILE_W)
            at = planes + h.to(tl.int64) * stride_h + w.to(tl.int64) * stride_w
            g = tl.load(roi_g + p, mask=mine, other=0.0)
            total = tl.load(at, mask=mine, other=0.0) + g.to(GX.dtype.element_ty)
            tl.store(at, total, mask=mine)
            cell = cell_ahead
            p = p_ahead


@kernel
def roi_pool_gather_backward_kernel(
    G, ARGMAX, ROIS, LISTS, COUNTS, GX, N, C, H, W, K, scale_bits,
    stride_n, stride_c, stride_h, stride_w,
    PH: tl.constexpr, PW: tl.constexpr, PH_BITS: tl.constexpr, PW_BITS: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ARGMAX_CM: tl.constexpr,
):  # fmt: skip
    """GX[n, c, h, w] (any strides) = the sum of G[k, c, p] over the outputs whose argmax
    (ARGMAX[K, P, C], channel-major if ARGMAX_CM) is cell (h, w), RoIs in ascending order
    and a RoI's bins in row-major order: the reference's order of additions, in float32
    (float64 for float64 G). One program per (tile of ``roi_pool_tile_lists_kernel``,
    block of BLOCK_C channels) writes its [channels, cells] tile whole, visiting the
    tile's RoIs and, for each cell, the bins that hold it."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    tile = tl.program_id(0) // c_blocks
    n, _top, _left, h, w, in_map = tile_cells(tile, H, W, TILE_H, TILE_W)
    cell = h * W + w
    c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    acc_dtype = tl.float64 if G.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_C, TILE_H * TILE_W), acc_dtype)
    DT = ROIS.dtype.element_ty
    for j in range(0, tl.load(COUNTS + tile)):
        k = tl.load(LISTS + tl.cast(tile, tl.int64) * K + j)
        _, start_h, start_w, roi_h, roi_w, _ = _quantized_roi(ROIS, k, N, scale_bits)
        roi_g = G + tl.cast(k, tl.int64) * C * (PH * PW)
        roi_argmax = ARGMAX + tl.cast(k, tl.int64) * C * (PH * PW)
        ph0, ph_stop = _bins_over(h, start_h, roi_h, PH, PH_BITS, DT)
        pw0, pw_stop = _bins_over(w, start_w, roi_w, PW, PW_BITS, DT)
        ph_stop = tl.where(in_map, ph_stop, ph0)
        for dph in range(0, tl.max(ph_stop - ph0, axis=0)):
            ph = ph0 + dph
            for dpw in range(0, tl.max(pw_stop - pw0, axis=0)):
                pw = pw0 + dpw
                holds = (ph < ph_stop) & (pw < pw_stop)
                # (offsets within RoI k's outputs, in int32: C * PH * PW < 2**31)
                p = (ph * PW + pw)[None, :]
                g_at = c[:, None] * (PH * PW) + p
                argmax_at = g_at if ARGMAX_CM else p * C + c[:, None]
                routes = c_ok[:, None] & holds[None, :]
                won = tl.load(roi_argmax + argmax_at, mask=routes, other=-1) == cell[None, :]
                g = tl.load(roi_g + g_at, mask=won, other=0.0).to(acc_dtype)
                acc = tl.where(won, acc + g, acc)
    store_tile(GX, acc, n, c, h, w, c_ok, in_map, stride_n, stride_c, stride_h, stride_w)


@kernel
def roi_pool_backward_kernel(
    G, ROIS, ARGMAX, AMAX, ACC, N, C, H, W, log2_count,
    P: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ARGMAX_CM: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += G[k, c, p] at each channel's argmax cell
    (ARGMAX[K, P, C], channel-major if ARGMAX_CM), for one RoI and block of channels, all
    of its bins."""
    k, c, c_ok = roi_channels_tile(C, BLOCK_C, ROIS_INNER)
    # the forward's argmax is -1 for an invalid RoI; the batch index is checked again so
    # that no argmax handed to this kernel can make it write outside the accumulator
    n, valid = batch_index(ROIS, k, N, 5)
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    scatter_to_argmax(G, ARGMAX, ACC + n * H * W * C, k, c, c_ok, valid, C, H * W, scale,
                      P, BLOCK_P, ARGMAX_CM)  # fmt: skip


@triton.jit
def scatter_to_argmax(G, ARGMAX, IMAGE, k, c, c_ok, valid, C, cells, scale,
                      P: tl.constexpr, BLOCK_P: tl.constexpr,
                      ARGMAX_CM: tl.constexpr):  # fmt: skip
    """IMAGE[cell, c] += G[k, c, p] (fixed point, IMAGE an NHWC image of the accumulator)
    at the argmax cell ``ARGMAX[k, p, c]`` of every bin p of RoI k, channels c: tiles of
    [BLOCK_P bins, channels], loaded along bins from G and from a channel-major
    (ARGMAX_CM) argmax, along channels from a channels-last one.
    A RoI that is not ``valid``, an argmax of -1 (an empty bin) or outside the image's
    ``cells`` routes nothing."""
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[:, None]
        ok = (p < P) & c_ok[None, :]
        g_at, argmax_at = output_offsets(k, c[None, :], p, C, P, ARGMAX_CM)
        g = tl.load(G + g_at, mask=ok, other=0.0)
        # (a scalar & a tensor trips the interpreter)
        cell = tl.load(ARGMAX + argmax_at, mask=tl.where(valid, ok, False), other=-1)
        ok = ok & (cell >= 0) & (cell < cells)
        add_to_cell(IMAGE + c[None, :], cell.to(tl.int64), C, g, scale, ok)


# ----------------------------------------------------------------------------- launchers
def roi_pool_forward(input, rois, spatial_scale, pooled_h, pooled_w, with_argmax=True,
                     nhwc=None):  # fmt: skip
    """``(out[K, C, ph, pw], argmax[K, ph, pw, C] or None)``. ``nhwc``: the NHWC kernel
    reads the map (lanes over channels; a map that is not channels_last is copied to it
    first), or the NCHW kernel (lanes over bins; the map made NCHW-contiguous); by
    default the map is read as it lies. Neither copy wins everywhere, measured on an
    H100 (float32, 7x7): copying an NCHW map for the NHWC kernel took 0.96 ms against
    1.18 on a [2, 256, 200, 272] map with 1000 RoIs of 4-100 cells, but 0.62 against 0.34
    (training forward) on a [1, 512, 256, 256] map with 512 RoIs of 1-8 cells, where the
    copy outweighs the work and the NHWC kernel's programs hold a cell or two each."""
    K = rois.shape[0]
    N, C, H, W = input.shape
    shape = (K, C, pooled_h, pooled_w)
    out = input.new_empty(shape)
    if nhwc is None:
        nhwc = is_channels_last(input)
    # each kernel stores the argmax the way its lanes lie (``roiops._layout``)
    argmax = new_argmax(input, shape, channel_major=not nhwc) if with_argmax else None
    args = (rois, out, argmax if with_argmax else out, N, C, H, W, scale_bits(spatial_scale))
    mode = dict(PH=pooled_h, PW=pooled_w, STORE_ARGMAX=with_argmax,
                ROIS_INNER=tiles.GATHER_ROIS_INNER)  # fmt: skip
    if nhwc:
        grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "roi_pool",
                                                     forward=True)  # fmt: skip
        roi_pool_forward_nhwc_kernel[grid](
            input.contiguous(memory_format=torch.channels_last), *args, **mode,
            BLOCK_C=block_c, num_warps=num_warps,
        )  # fmt: skip
    else:
        grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "roi_pool")
        roi_pool_forward_kernel[grid](
            input.contiguous(), *args, **mode, BLOCK=block, num_warps=num_warps
        )
    return out, argmax


def tile_count(N: int, H: int, W: int) -> int:
    """The tiles of GATHER_TILE_H x GATHER_TILE_W cells over N maps of H x W."""
    return N * cdiv(H, GATHER_TILE_H) * cdiv(W, GATHER_TILE_W)


def new_tile_lists(tiles: int, num_rois: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lists, counts)`` for ``roi_pool_tile_lists_kernel`` and its kin: ``num_rois``
    entries a tile, and each tile's count (both written by the kernel, not zeroed)."""
    lists = torch.empty(tiles * num_rois, dtype=torch.int32, device=device)
    return lists, torch.empty(tiles, dtype=torch.int32, device=device)


def pool_tile_lists(rois, N, H, W, tiles, bits, pooled_h, pooled_w, ps=False, op="roi_pool"):
    """``(lists, counts)`` of ``tiles`` tiles, filled by ``roi_pool_tile_lists_kernel``
    (``ps``: position-sensitive pooling's quantization)."""
    K = rois.shape[0]
    lists, counts = new_tile_lists(tiles, K, rois.device)
    roi_pool_tile_lists_kernel[check_grid(tiles, op)](
        rois, lists, counts, N, H, W, K, bits, PH=pooled_h, PW=pooled_w,
        TILE_H=GATHER_TILE_H, TILE_W=GATHER_TILE_W, BLOCK_K=GATHER_LIST_BLOCK, PS=ps,
        num_warps=4,
    )  # fmt: skip
    return lists, counts


def roi_pool_backward(grad, rois, argmax, grad_input, spatial_scale):
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``: by
    tiles (``GATHER_BACKWARD``, where the tiles' RoI lists fit ``GATHER_LIST_LIMIT``), else
    by the fixed-point scatter."""
    N, C, H, W = grad_input.shape
    K, _, pooled_h, pooled_w = grad.shape
    tiles = tile_count(N, H, W)
    lanes_over_cells = GATHER_LANES == "cells"
    # (the cells kernel's offsets within a RoI's outputs are int32)
    too_many = tiles * K > GATHER_LIST_LIMIT or (
        lanes_over_cells and C * pooled_h * pooled_w >= 2**31
    )
    if not GATHER_BACKWARD or too_many:
        sums = Accumulator(grad, grad_input.shape)
        roi_pool_scatter(sums, grad, rois, argmax)
        return sums.write_to(grad_input)
    if tiles == 0:
        return grad_input
    bits = scale_bits(spatial_scale)
    lists, counts = pool_tile_lists(rois, N, H, W, tiles, bits, pooled_h, pooled_w)
    mode = dict(PH=pooled_h, PW=pooled_w, TILE_H=GATHER_TILE_H, TILE_W=GATHER_TILE_W,
                PH_BITS=pooled_h.bit_length(), PW_BITS=pooled_w.bit_length())  # fmt: skip
    if not lanes_over_cells:
        # the sums are made in the gradient itself, or in float32 for half precision
        wide = grad_input.dtype in (torch.float32, torch.float64)
        sums = grad_input
        if not wide:
            sums = torch.empty(grad_input.shape, dtype=torch.float32, device=grad.device)
        block_c = min(TILE_CHANNELS, next_power_of_2(C))
        if TILE_ARGMAX_AS_IT_LIES:
            argmax, channel_major = readable_argmax(argmax)
        else:
            argmax, channel_major = argmax.contiguous(), False
        roi_pool_tile_backward_kernel[check_grid(tiles * cdiv(C, block_c), "roi_pool")](
            grad.contiguous(), argmax, rois, lists, counts, sums, N, C, H, W, K,
            bits, *sums.stride(), **mode, BLOCK_C=block_c, ARGMAX_CM=channel_major,
            num_warps=max(1, block_c // 32),
        )  # fmt: skip
        return grad_input if wide else grad_input.copy_(sums)
    argmax, channel_major = readable_argmax(argmax)
    block_c = min(GATHER_CHANNELS, next_power_of_2(C))
    roi_pool_gather_backward_kernel[check_grid(tiles * cdiv(C, block_c), "roi_pool")](
        grad.contiguous(), argmax, rois, lists, counts, grad_input, N, C, H, W, K, bits,
        *grad_input.stride(), **mode, BLOCK_C=block_c, ARGMAX_CM=channel_major,
        num_warps=GATHER_WARPS,
    )  # fmt: skip
    return grad_input


def roi_pool_scatter(sums: Accumulator, grad, rois, argmax):
    """Add ``grad[K, C, ph, pw]`` at the forward's argmax cells into ``sums.acc``."""
    N, H, W, C = sums.acc.shape
    K, _, pooled_h, pooled_w = grad.shape
    grid, block_p, block_c, num_warps = roi_channels_grid(K, C, pooled_h * pooled_w, "roi_pool")
    argmax, channel_major = readable_argmax(argmax)
    roi_pool_backward_kernel[grid](
        grad.contiguous(), rois, argmax, sums.amax, sums.acc, N, C, H, W,
        sums.log2_count, P=pooled_h * pooled_w, BLOCK_P=block_p, BLOCK_C=block_c,
        ARGMAX_CM=channel_major, ROIS_INNER=tiles.SCATTER_ROIS_INNER, num_warps=num_warps,
    )  # fmt: skip
