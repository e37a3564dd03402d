"""RoIPool in Triton: forward (max + argmax) and a deterministic backward.

The forward runs one program per (RoI, block of its outputs), as
``roiops.gpu.roi_align``'s. The backward scatters: one program per (RoI, block of
channels) over all of the RoI's bins (``roiops.gpu.tiles``) adds each output's gradient
to its argmax cell in the fixed-point accumulator of ``roiops.gpu.fixed_point`` (one
int64 atomic per output), the same bits on every run. (A backward by tiles, one program
per tile of cells and block of channels summing the gradients of the outputs whose
argmax each cell is, in the reference's order, was built and measured on an H100 at
5b130dd: 1.5-2.5x slower than this scatter; removed.) Quantization follows
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
from roiops.gpu.fixed_point import (
    Accumulator,
    Regions,
    add_to_cell,
    finish_plan,
    fixed_point_scale,
    record_regions,
    region_rois,
    region_rounds,
    to_fixed,
)
from roiops.gpu.launch import Launch
from roiops.gpu.rois import batch_index, div_rn, load_roi, scale_bits
from roiops.gpu.tiles import (
    bin_channels_grid,
    bin_channels_tile,
    bins_grid,
    bins_tile,
    is_channels_last,
    kernel,
    output_offsets,
    roi_channels_grid,
    roi_channels_tile,
    store_bins,
)

# the backward's fixed-point sums zeroed and converted only in the RoIs' regions where
# those are a small part of the map (``roiops.gpu.fixed_point.Regions``), off until timed
# on a GPU
REGIONS = False
# the NCHW forward visits a bin 2x2 cells at a time, the four loads issued before the
# comparisons (``visit_2x2``: the same outputs and argmax), instead of cell by cell, a
# load and a comparison at a time. A bin of a small RoI holds a cell or two a side: a
# lane that waits for each load has one in flight, with 2x2 its whole bin. Off until
# timed on a GPU (``make gpu-tune``'s ``kernel_configs``)
VISIT_2X2 = False
# the scatter adds a run of consecutive bins whose argmax is the same cell once, their
# sum (``scatter_to_argmax``); on an H100 (2026-11-27, the bench's inputs, the op alone
# in the same rounds) 0.68 -> 0.61 ms on `a small`, 0.63 -> 0.59 on `b`
RUNS = True

# bins start from -FLT_MAX, as in torchvision and the reference
FLT_LOWEST = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def rounded_half_away(v):
    """C's round(): halves away from zero, in v's float type."""
    a = tl.abs(v)
    r = tl.floor(a)
    r = tl.where(a - r >= 0.5, r + 1.0, r)
    return tl.where(v < 0, -r, r)


@triton.jit
def round_half_away(v):
    """C's round() as an int32 (a cell)."""
    return rounded_half_away(v).to(tl.int32)


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
    ROIS_INNER: tl.constexpr = False, VISIT_2X2: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] and (STORE_ARGMAX) ARGMAX[K, PH, PW, C] (cell h * W + w, or -1;
    channel-major) from X[N, C, H, W]; VISIT_2X2: a lane loads 2x2 cells of its bin at
    once."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    pool_bins(X, ROIS, OUT, ARGMAX, k, c, p, ok, N, C, H, W, scale_bits, True, PH, PW, BLOCK,
              STORE_ARGMAX, VISIT_2X2)  # fmt: skip


@triton.jit
def pool_bins(X, ROIS, OUT, ARGMAX, k, c, p, ok, N, C, H, W, scale_bits, usable,
              PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr,
              STORE_ARGMAX: tl.constexpr, VISIT_2X2: tl.constexpr = False):  # fmt: skip
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
    if not VISIT_2X2:
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
    else:
        for dh in range(0, span_h, 2):
            for dw in range(0, span_w, 2):
                best, best_at = visit_2x2(X, plane, h0 + dh, h1, w0 + dw, w1, ok, W, best,
                                          best_at)  # fmt: skip
    empty = (h1 <= h0) | (w1 <= w0)
    # (lanes past the last channel are zeroed too: -FLT_MAX would overflow a half cast)
    best = tl.where(empty | ~ok, 0.0, best)
    # an invalid RoI's outputs are NaN: visible, not silently zero
    best = tl.where(valid, best, float("nan"))
    store_bins(OUT, ARGMAX, best, best_at, k, c, p, ok, C, PH * PW, STORE_ARGMAX)


@triton.jit
def visit_2x2(X, plane, h, h1, w, w1, ok, W, best, best_at):
    """``(best, best_at)`` after the cells [h, h + 2) x [w, w + 2) of each lane's bin
    (those below h1 and w1), the four loads issued before any comparison (cell by cell,
    ptxas puts each comparison right after its load: one load in flight a lane). The
    largest value wins and, among equal ones, the lowest cell h * W + w, the first of a
    row-major visit (the reference's strict >): the same maximum and argmax in any order
    of blocks (and of -0.0 and 0.0, equal: the first's sign). NaN never wins, as under
    >."""
    a, at_a = _cell(X, plane, h, w, h1, w1, ok, W, best.dtype)
    b, at_b = _cell(X, plane, h, w + 1, h1, w1, ok, W, best.dtype)
    c, at_c = _cell(X, plane, h + 1, w, h1, w1, ok, W, best.dtype)
    d, at_d = _cell(X, plane, h + 1, w + 1, h1, w1, ok, W, best.dtype)
    # (a tree: the first comparison needs all four values)
    ab, at_ab = _better(b, at_b, a, at_a)
    cd, at_cd = _better(d, at_d, c, at_c)
    top, at = _better(cd, at_cd, ab, at_ab)
    return _better(top, at, best, best_at)


@triton.jit
def _cell(X, plane, h, w, h1, w1, ok, W, dtype: tl.constexpr):
    """(value, cell): cell (h, w) of each lane's plane, -inf where it lies outside the
    bin or is NaN. Not a masked load: a lane outside reads X[0] (the map's first value,
    which exists where any bin is not empty), so that the compiler needs no predicate
    register per load (sm_90 has 7: with one each, ptxas interleaved the loads with the
    comparisons)."""
    inside = (h < h1) & (w < w1) & ok
    cell = h * W + w
    v = tl.load(tl.where(inside, plane + cell, X)).to(dtype)
    # outside: -inf, which never wins; NaN too, as it never does under > (max ignores NaN)
    return tl.maximum(tl.where(inside, v, float("-inf")), float("-inf")), cell


@triton.jit
def _better(v, cell, best, best_at):
    """``(best, best_at)`` with ``v`` at ``cell`` taken where larger, or equal at a lower
    cell (``visit_2x2``; -inf never wins over the lowest finite value bins start from)."""
    wins = (v > best) | ((v == best) & (cell < best_at))
    return tl.where(wins, v, best), tl.where(wins, cell, best_at)


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


@kernel
def roi_pool_backward_kernel(
    G, ROIS, ARGMAX, AMAX, ACC, RECTS, N, C, H, W, log2_count,
    P: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ARGMAX_CM: tl.constexpr,
    ROIS_INNER: tl.constexpr = False, REGIONS: tl.constexpr = False, RUNS: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += G[k, c, p] at each channel's argmax cell
    (ARGMAX[K, P, C], channel-major if ARGMAX_CM), for one RoI and block of channels, all
    of its bins; with REGIONS only at cells inside the RoI's region RECTS[k]
    (``roi_pool_regions_kernel``); RUNS: a run of bins on one cell adds once
    (``scatter_to_argmax``)."""
    k, c, c_ok = roi_channels_tile(C, BLOCK_C, ROIS_INNER)
    # the forward's argmax is -1 for an invalid RoI; the batch index is checked again so
    # that no argmax handed to this kernel can make it write outside the accumulator
    n, valid = batch_index(ROIS, k, N, 5)
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    scatter_to_argmax(G, ARGMAX, ACC + n * H * W * C, k, c, c_ok, valid, C, H * W, scale,
                      P, BLOCK_P, ARGMAX_CM, RECTS, W, REGIONS, RUNS)  # fmt: skip


@triton.jit
def scatter_to_argmax(G, ARGMAX, IMAGE, k, c, c_ok, valid, C, cells, scale,
                      P: tl.constexpr, BLOCK_P: tl.constexpr, ARGMAX_CM: tl.constexpr,
                      RECTS=None, W=0, REGIONS: tl.constexpr = False,
                      RUNS: tl.constexpr = False):  # fmt: skip
    """IMAGE[cell, c] += G[k, c, p] (fixed point, IMAGE an NHWC image of the accumulator)
    at the argmax cell ``ARGMAX[k, p, c]`` of every bin p of RoI k, channels c: tiles of
    [BLOCK_P bins, channels], loaded along bins from G and from a channel-major
    (ARGMAX_CM) argmax, along channels from a channels-last one.
    A RoI that is not ``valid``, an argmax of -1 (an empty bin) or outside the image's
    ``cells`` routes nothing; with REGIONS neither does one outside the RoI's region
    RECTS[k] (rows [h0, h1), columns [w0, w1) of a map W cells wide), which the forward's
    argmax never is. RUNS: consecutive bins of a tile whose argmax is the same cell (a
    RoI of a few cells under 7x7 bins: up to 49 bins on one cell) add their sum once, at
    the run's last bin (a segmented scan of the fixed-point values, exact: the same bits
    as an atomic each)."""
    h0, h1, w0, w1 = 0, 0, 0, 0
    if REGIONS:
        at = RECTS + tl.cast(k, tl.int64) * 5
        h0, h1, w0, w1 = tl.load(at + 1), tl.load(at + 2), tl.load(at + 3), tl.load(at + 4)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)[:, None]
        ok = (p < P) & c_ok[None, :]
        g_at, _ = output_offsets(k, c[None, :], p, C, P, ARGMAX_CM)
        g = tl.load(G + g_at, mask=ok, other=0.0)
        cell, ok = _routed_cell(ARGMAX, k, c, p, ok, valid, C, cells, P, ARGMAX_CM, h0, h1,
                                w0, w1, W, REGIONS)  # fmt: skip
        if RUNS:
            # the cells of the bins before and after in the tile (-1 past its ends, as
            # for a bin that routes nothing): a run starts where the cell changes. The
            # neighbours skip the region test (a division a bin): a neighbour on a bin's
            # routed cell lies in the same RoI's region, and one outside it differs from
            # every routed cell either way, so the runs of routed cells are the same
            fixed = tl.where(ok, to_fixed(g, scale), 0)
            last = p0 + BLOCK_P - 1
            before, _ = _routed_cell(ARGMAX, k, c, p - 1, (p > p0) & (p <= P) & c_ok[None, :],
                                     valid, C, cells, P, ARGMAX_CM, h0, h1, w0, w1, W,
                                     False)  # fmt: skip
            after, _ = _routed_cell(ARGMAX, k, c, p + 1, (p < last) & (p + 1 < P) & c_ok[None, :],
                                    valid, C, cells, P, ARGMAX_CM, h0, h1, w0, w1, W,
                                    False)  # fmt: skip
            _, sums = tl.associative_scan((cell != before, fixed), 0, _segmented_sum)
            ends = cell != after
            tl.atomic_add(IMAGE + c[None, :] + cell.to(tl.int64) * C, sums,
                          mask=ok & ends & (sums != 0), sem="relaxed")  # fmt: skip
        else:
            add_to_cell(IMAGE + c[None, :], cell.to(tl.int64), C, g, scale, ok)


@triton.jit
def _routed_cell(ARGMAX, k, c, p, ok, valid, C, cells, P: tl.constexpr,
                 ARGMAX_CM: tl.constexpr, h0, h1, w0, w1, W, REGIONS: tl.constexpr):  # fmt: skip
    """(cell, routed): the argmax cell of RoI k's bins p, channels c (where ``ok``; -1
    elsewhere), and whether it takes the gradient (``scatter_to_argmax``'s rules); a cell
    that does not is -1."""
    _, argmax_at = output_offsets(k, c[None, :], p, C, P, ARGMAX_CM)
    # (a scalar & a tensor trips the interpreter)
    cell = tl.load(ARGMAX + argmax_at, mask=tl.where(valid, ok, False), other=-1)
    routed = ok & (cell >= 0) & (cell < cells)
    if REGIONS:
        h = cell // W
        w = cell - h * W
        routed = routed & (h >= h0) & (h < h1) & (w >= w0) & (w < w1)
    return tl.where(routed, cell, -1), routed


@triton.jit
def _segmented_sum(start_a, sum_a, start_b, sum_b):
    """A segmented scan's step: b's sum, plus a's where b does not start a segment."""
    return start_a | start_b, tl.where(start_b, sum_b, sum_a + sum_b)


@kernel
def roi_pool_regions_kernel(
    ROIS, RECTS, PARTS, FLAGS, K, N, H, W, scale_bits, flag_count,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """RoIPool's ``roiops.gpu.fixed_point.Regions``: RECTS[k] = the union of RoI k's bins
    as the forward cuts them (from the first bin's first cell to the last bin's end,
    clipped to the map; bins grow monotonically and touch or overlap), the areas' pieces
    and the flags zeroed (``finish_plan``); one of REGION_PARTS programs, BLOCK RoIs a
    round, every REGION_PARTS-th round."""
    areas = tl.zeros((BLOCK,), tl.int64)
    largest = tl.zeros((BLOCK,), tl.int64)
    for i in range(0, region_rounds(K, BLOCK)):
        k, in_range, readable = region_rois(i, K, BLOCK)
        n, start_h, start_w, roi_h, roi_w, valid = _quantized_roi(ROIS, readable, N, scale_bits)
        first = tl.zeros((BLOCK,), tl.int32)
        h0, _ = bin_edges(start_h, roi_h, first, PH, H, ROIS.dtype.element_ty)
        _, h1 = bin_edges(start_h, roi_h, first + (PH - 1), PH, H, ROIS.dtype.element_ty)
        w0, _ = bin_edges(start_w, roi_w, first, PW, W, ROIS.dtype.element_ty)
        _, w1 = bin_edges(start_w, roi_w, first + (PW - 1), PW, W, ROIS.dtype.element_ty)
        areas, largest = record_regions(RECTS, k, in_range, n, h0, h1, w0, w1, valid, H, W,
                                        areas, largest)  # fmt: skip
    finish_plan(PARTS, FLAGS, areas, largest, flag_count)


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
    sizes = input.shape
    shape = (K, sizes[1], pooled_h, pooled_w)
    out = input.new_empty(shape)
    if nhwc is None:
        nhwc = is_channels_last(input)
    # each kernel stores the argmax the way its lanes lie (``roiops._layout``)
    argmax = new_argmax(input, shape, channel_major=not nhwc) if with_argmax else None
    launch = _forward_launch(sizes, input.dtype, input.get_device(), K, nhwc, spatial_scale,
                             pooled_h, pooled_w, with_argmax, tiles.GATHER_ROIS_INNER,
                             VISIT_2X2)  # fmt: skip
    input = input.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    launch(input, rois, out, argmax if with_argmax else out)
    return out, argmax


@tiles.cached
def _forward_launch(sizes, dtype, device, K, nhwc, spatial_scale, pooled_h, pooled_w,
                    with_argmax, rois_inner, visit_2x2) -> Launch:  # fmt: skip
    """``roi_pool_forward``'s launch for a map of ``sizes`` (N, C, H, W) of ``dtype`` on
    ``device`` (those two keep apart the launches of different tensors), K RoIs, these
    parameters and settings: its tensors ``(input, rois, out, argmax or out)``."""
    N, C, H, W = sizes
    values = (N, C, H, W, scale_bits(spatial_scale))
    mode = dict(PH=pooled_h, PW=pooled_w, STORE_ARGMAX=with_argmax, ROIS_INNER=rois_inner)
    if nhwc:
        grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "roi_pool",
                                                     forward=True)  # fmt: skip
        return Launch(roi_pool_forward_nhwc_kernel, grid, values, **mode, BLOCK_C=block_c,
                      num_warps=num_warps)  # fmt: skip
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "roi_pool")
    return Launch(roi_pool_forward_kernel, grid, values, **mode, BLOCK=block,
                  VISIT_2X2=visit_2x2, num_warps=num_warps)  # fmt: skip


def roi_pool_backward(grad, rois, argmax, grad_input, spatial_scale):
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``: the
    fixed-point scatter to the forward's argmax cells, then the conversion; with REGIONS,
    in the RoIs' regions (``roi_pool_regions``)."""
    regions = None
    if REGIONS:
        regions = roi_pool_regions(rois, grad_input.shape, spatial_scale, *grad.shape[2:])
    sums = Accumulator(grad, grad_input.shape, regions=regions)
    roi_pool_scatter(sums, grad, rois, argmax)
    return sums.write_to(grad_input)


def roi_pool_regions(rois, shape, spatial_scale, pooled_h, pooled_w) -> Regions:
    """The ``Regions`` of ``rois`` on a map of ``shape`` (N, C, H, W), filled by
    ``roi_pool_regions_kernel``."""
    return Regions.found_by(roi_pool_regions_kernel, rois, shape, spatial_scale, PH=pooled_h,
                            PW=pooled_w)  # fmt: skip


def roi_pool_scatter(sums: Accumulator, grad, rois, argmax):
    """Add ``grad[K, C, ph, pw]`` at the forward's argmax cells into ``sums.acc`` (with
    ``sums.regions``, only inside each RoI's region)."""
    N, H, W, C = sums.acc.shape
    K, _, pooled_h, pooled_w = grad.shape
    argmax, channel_major = readable_argmax(argmax)
    regions = sums.regions
    launch = _scatter_launch(N, C, H, W, K, grad.dtype, grad.get_device(), pooled_h * pooled_w,
                             sums.log2_count, channel_major, regions is not None,
                             tiles.SCATTER_ROIS_INNER, RUNS)  # fmt: skip
    launch(grad.contiguous(), rois, argmax, sums.amax, sums.acc,
           rois if regions is None else regions.rects)  # fmt: skip


@tiles.cached
def _scatter_launch(N, C, H, W, K, dtype, device, bins, log2_count, channel_major, regions,
                    rois_inner, runs) -> Launch:  # fmt: skip
    """``roi_pool_scatter``'s launch for ``grad[K, C, ph, pw]`` (``bins`` = ph * pw) of
    ``dtype`` on ``device`` into an accumulator of N images of H x W cells, these
    parameters and settings: its tensors ``(grad, rois, argmax, amax, acc, rects or
    rois)``."""
    grid, block_p, block_c, num_warps = roi_channels_grid(K, C, bins, "roi_pool")
    return Launch(roi_pool_backward_kernel, grid, (N, C, H, W, log2_count), P=bins,
                  BLOCK_P=block_p, BLOCK_C=block_c, ARGMAX_CM=channel_major,
                  ROIS_INNER=rois_inner, REGIONS=regions, RUNS=runs,
                  num_warps=num_warps)  # fmt: skip
