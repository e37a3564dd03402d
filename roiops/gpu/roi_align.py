"""RoIAlign in Triton: forward (avg/max) and a deterministic backward.

Forward: one program per (RoI, block of its outputs); it computes the RoI's geometry once,
loops over the RoI's sampling grid and gathers the four neighbours of every point from
NCHW input for each of its (channel, bin) outputs. (Channels-last maps: lanes over
channels instead.) (A forward by RoI windows, each RoI's cells read once with the bins'
separable per-cell weights, was built and measured on an H100 at 5b130dd: 2x slower
than this one where it applies, an adaptive grid; removed.)

Backward: one program per (RoI, bin, block of channels) scatters the bin's gradient into
the fixed-point accumulator of ``roiops.gpu.fixed_point`` with 64-bit integer atomics,
so the sum is the same bits on every run. Average mode first sums, per distinct cell,
the bilinear weights of all the bin's sampling points: the weight a cell (y, x) gets is
separable, ``Ay[y] * Ax[x]`` with ``Ay[y]`` the summed row weights of the bin's sampling
rows (``Ax`` likewise), so a bin of 2x2 points over one cell costs 9 atomics instead of
16, and a bin of 10x10 points over 10 cells 121 instead of 400. Max mode adds the winning
point's four weights (each channel its own point). (Backwards by tiles of cells, each
program summing the RoIs listed over its tile in registers, for the average and
position-sensitive modes, were built and measured on an H100 at 5b130dd: 1.1-4.8x
slower than this scatter; removed.)

Arithmetic follows ``roiops.reference.roi_align`` (same conventions, IEEE division);
compute is in float32 (float64 for float64 inputs).
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
    accumulator_channel,
    add_to_cell,
    finish_plan,
    fixed_point_scale,
    record_regions,
    region_rois,
    region_rounds,
)
from roiops.gpu.launch import Launch
from roiops.gpu.rois import adaptive_grid, div_rn, from_bits, load_roi, scale_bits
from roiops.gpu.tiles import (
    bin_channels_grid,
    bin_channels_tile,
    bins_grid,
    bins_tile,
    is_channels_last,
    kernel,
    output_offsets,
    roi_outputs_grid,
    roi_outputs_tile,
    store_bins,
)

# cells per side of the window over which the backward sums a bin's weights at once
SPAN = 8
# the backward's fixed-point sums zeroed and converted only in the RoIs' regions where
# those are a small part of the map (``roiops.gpu.fixed_point.Regions``; not for
# position-sensitive pooling, whose maps its RoIs cover), off until timed on a GPU
REGIONS = False
# Position-sensitive backward (ps_roi_align) with a block of a RoI's (bin, channel)
# outputs a program (``ps_roi_align_backward_kernel``, ``tiles.roi_outputs_grid``),
# instead of one program per (RoI, bin, block of output channels), which held 21 of 32
# lanes busy on one warp for R-FCN's 21 classes (8 for its box coordinates) and summed
# each window's weights with a reduction across the lanes per cell. The same bits either
# way. Timed on an H100 (5b130dd, the bench's R-FCN case): 0.17 ms against 0.18 a
# program per bin (the op; torchvision 0.16).
PS_LANES = True
# The NCHW forward's points take from the previous point of their row the columns it
# loaded (``_reused_corners``: the same values, so the same bits): points closer than a
# cell share both columns, points a cell apart one, so a row of an adaptive grid's points
# (at most a cell apart) loads about two values a point instead of four, fewer where a
# fixed grid's points crowd into a small bin. On the bench's 'a large sr=0' case the
# kernel issues ~53 instructions a point and its four loads, each lane's in another bin
# (a sector apiece); this halves the loads' L1 traffic for ~17 instructions more a point.
# Timed on an H200: the kernels alone (1bb2d53, `kernel_configs`, the adaptive grid's
# split) 'a large sr=0' 7.56 -> 5.57 ms, 'a small sr=0' 0.205 -> 0.207; with a fixed grid
# it loses ('b sr=2' RoIs innermost 0.233 -> 0.302, the FPN case 0.077 -> 0.102). The op
# with an adaptive grid (c9bf0ed, the same rounds, float32 back to back): 'a large sr=0'
# 7.47 -> 5.50 ms and R-FCN's ps_roi_align with sr=0 0.092 -> 0.065, but 'a small sr=0'
# 0.170 -> 0.180 and the FPN case with sr=0 (detectron2's default) 2.03 -> 2.39; float16
# alike, except 'a large sr=0' (5.53 -> 5.57). So off by default. Values: False (never),
# True (always), "adaptive" (where the kernel samples an adaptive grid) or "wide" (where a
# RoI's rows have at least REUSE_MIN_POINTS points: a fixed grid's count is known at the
# launch, an adaptive grid's per RoI in the kernel; 'a large sr=0' has 5-19 points a row,
# the FPN case with sr=0 mostly 1-4; untimed)
REUSE_LOADS = False
REUSE_MIN_POINTS = 5
REUSE_CHOICES = (False, True, "adaptive", "wide")
# MAX_MODE of the kernels: 0/False average, 1/True the article's max, 2 ONNX RoiAlign's max
ONNX_MAX_MODE = 2
ONNX_MAX = tl.constexpr(ONNX_MAX_MODE)


def reuse_loads(sampling_ratio: int) -> tuple[bool, int]:
    """``(REUSE, REUSE_MIN)`` of an NCHW forward launch with this ``sampling_ratio``
    (``REUSE_LOADS``): whether its points may reuse their row's loads, and the least
    number of points a RoI's rows must have for them to (checked per RoI in the kernel;
    0 or 1: every row)."""
    if REUSE_LOADS not in REUSE_CHOICES:
        raise ValueError(f"REUSE_LOADS: {REUSE_LOADS!r} is none of {REUSE_CHOICES}")
    adaptive = sampling_ratio <= 0
    if REUSE_LOADS == "adaptive":
        return adaptive, 0
    if REUSE_LOADS == "wide":
        return (True, REUSE_MIN_POINTS) if adaptive else (sampling_ratio >= REUSE_MIN_POINTS, 0)
    return bool(REUSE_LOADS), 0


@triton.jit
def roi_extent(ROIS, k, N, SCALE_BITS, usable, ALIGNED: tl.constexpr):
    """(n, start_h, start_w, height, width, valid) of RoI k in feature cells (see
    ``load_roi``; not valid either where not ``usable``, e.g. its pyramid level is out of
    range)."""
    n, x1, y1, x2, y2, valid = load_roi(ROIS, k, N, SCALE_BITS)
    valid = valid & usable
    offset = 0.5 if ALIGNED else 0.0
    start_w = x1 - offset
    start_h = y1 - offset
    width = (x2 - offset) - start_w
    height = (y2 - offset) - start_h
    if not ALIGNED:
        # legacy convention: malformed RoIs are forced to 1x1 cell
        width = tl.maximum(width, 1.0)
        height = tl.maximum(height, 1.0)
    return n, start_h, start_w, height, width, valid


@triton.jit
def _roi_geometry(ROIS, k, N, SCALE_BITS, sampling_ratio, usable, PH: tl.constexpr,
                  PW: tl.constexpr, ALIGNED: tl.constexpr):  # fmt: skip
    """(n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, valid) of RoI k; an invalid
    RoI (``roi_extent``) has an empty sampling grid."""
    n, start_h, start_w, height, width, valid = roi_extent(ROIS, k, N, SCALE_BITS, usable,
                                                           ALIGNED)  # fmt: skip
    bin_h = div_rn(height, PH)
    bin_w = div_rn(width, PW)
    grid_h, grid_w, valid = adaptive_grid(bin_h, bin_w, sampling_ratio, valid)
    return n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, valid


@triton.jit
def axis_sample(start, bin_size, bin_index, i, grid, limit):
    """(low, high, w_low, w_high, inside) of point i of the bins along one axis."""
    v = (start + bin_index * bin_size) + div_rn((i + 0.5) * bin_size, grid)
    low, high, w_low, w_high = bilinear_axis(v, limit)
    return low, high, w_low, w_high, (v >= -1.0) & (v <= limit)


@triton.jit
def bin_sum(plane, start_h, start_w, bin_h, bin_w, ph, pw, gh, gw, H, W, mask,
            BLOCK: tl.constexpr):  # fmt: skip
    """``[BLOCK]``: the sum, in float32 (float64 for a float64 map), of the bilinear values
    of bin (ph, pw)'s points on RoIAlign's grid from ``start`` (per lane: ``plane`` and
    the starts may differ between lanes), points more than a cell outside the map and
    lanes not in ``mask`` 0; points in order, as the reference adds them."""
    dt = tl.float32 if plane.dtype.element_ty != tl.float64 else tl.float64
    acc = tl.zeros((BLOCK,), dtype=dt)
    for iy in range(0, gh):
        y_lo, y_hi, wy_lo, wy_hi, y_in = axis_sample(start_h, bin_h, ph, iy, gh, H)
        for ix in range(0, gw):
            x_lo, x_hi, wx_lo, wx_hi, x_in = axis_sample(start_w, bin_w, pw, ix, gw, W)
            m = y_in & x_in & mask
            row_lo = plane + y_lo * W
            row_hi = plane + y_hi * W
            v = (
                wy_lo * wx_lo * tl.load(row_lo + x_lo, mask=m, other=0.0).to(dt)
                + wy_lo * wx_hi * tl.load(row_lo + x_hi, mask=m, other=0.0).to(dt)
                + wy_hi * wx_lo * tl.load(row_hi + x_lo, mask=m, other=0.0).to(dt)
                + wy_hi * wx_hi * tl.load(row_hi + x_hi, mask=m, other=0.0).to(dt)
            )
            acc += tl.where(m, v, 0.0)
    return acc


@triton.jit
def bilinear_axis(v, limit):
    """(low, high, w_low, w_high): the two cells around coordinate v along one axis and
    their bilinear weights, v clamped into the map (the reference's
    ``bilinear_weights``; whether v is within a cell of the map is the caller's test)."""
    v = tl.maximum(v, 0.0)
    low = v.to(tl.int32)
    at_end = low >= limit - 1
    low = tl.where(at_end, limit - 1, low)
    high = tl.where(at_end, limit - 1, low + 1)
    v = tl.where(at_end, low.to(v.dtype), v)
    frac = v - low.to(v.dtype)
    return low, high, 1.0 - frac, frac


@triton.jit
def _corners(row_lo, row_hi, x_lo, x_hi, mask, DT: tl.constexpr):
    """A sampling point's four neighbours as DT (``row_*`` point at the two rows, ``x_*``
    are the columns' offsets in them; 0 where masked): (lo lo, lo hi, hi lo, hi hi)."""
    return (
        tl.load(row_lo + x_lo, mask=mask, other=0.0).to(DT),
        tl.load(row_lo + x_hi, mask=mask, other=0.0).to(DT),
        tl.load(row_hi + x_lo, mask=mask, other=0.0).to(DT),
        tl.load(row_hi + x_hi, mask=mask, other=0.0).to(DT),
    )


@triton.jit
def _bilinear(v_ll, v_lh, v_hl, v_hh, wy_lo, wy_hi, wx_lo, wx_hi):
    """A sampling point's value from its four neighbours' values (``_corners``), in the
    reference's order of operations."""
    return wy_lo * wx_lo * v_ll + wy_lo * wx_hi * v_lh + wy_hi * wx_lo * v_hl + wy_hi * wx_hi * v_hh


@triton.jit
def _corner_max(v_ll, v_lh, v_hl, v_hh, wy_lo, wy_hi, wx_lo, wx_hi):
    """ONNX RoiAlign's max of a sampling point: ``(largest w_i * v_i, its corner 0-3)``,
    the first of equal ones, corners in ``_bilinear``'s order (all 0 where masked)."""
    best = wy_lo * wx_lo * v_ll
    corner = tl.zeros(best.shape, tl.int32)
    term = wy_lo * wx_hi * v_lh
    corner = tl.where(term > best, 1, corner)
    best = tl.maximum(best, term)
    term = wy_hi * wx_lo * v_hl
    corner = tl.where(term > best, 2, corner)
    best = tl.maximum(best, term)
    term = wy_hi * wx_hi * v_hh
    corner = tl.where(term > best, 3, corner)
    best = tl.maximum(best, term)
    return best, corner


@triton.jit
def _sample_value(v_ll, v_lh, v_hl, v_hh, wy_lo, wy_hi, wx_lo, wx_hi, s,
                  MAX_MODE: tl.constexpr):  # fmt: skip
    """(value, argmax candidate) of sample s from its neighbours' values: its
    interpolated value and s, or (ONNX max, ``MAX_MODE == ONNX_MAX``) its largest
    weighted corner term and ``4 * s + corner``."""
    if MAX_MODE == ONNX_MAX:
        v, corner = _corner_max(v_ll, v_lh, v_hl, v_hh, wy_lo, wy_hi, wx_lo, wx_hi)
        candidate = 4 * s + corner
    else:
        v = _bilinear(v_ll, v_lh, v_hl, v_hh, wy_lo, wy_hi, wx_lo, wx_hi)
        candidate = tl.zeros(v.shape, tl.int32) + s
    return v, candidate


@triton.jit
def _reused_corners(row_lo, row_hi, x_lo, x_hi, mask, seen_lo, seen_hi, c_ll, c_lh, c_hl,
                    c_hh, DT: tl.constexpr):  # fmt: skip
    """``_corners`` where the previous sampling point of the row of points (the same two
    rows) loaded columns ``seen_lo`` and ``seen_hi`` (-1: none), whose values were
    ``c_*``: a column seen is taken from there and not loaded again (points closer than
    a cell share both columns, points a cell apart the one between them). The same
    values, so the same bits. Returns the four values, which the next point takes as its
    ``c_*``, and the columns to carry on: this point's, or none where ``mask`` loaded
    nothing (its values are 0, as ``_corners``')."""
    lo_at_lo = mask & (x_lo == seen_lo)
    lo_at_hi = mask & (x_lo == seen_hi)
    hi_at_hi = mask & (x_hi == seen_hi)
    hi_at_lo = mask & (x_hi == seen_lo)
    load_lo = mask & ~(lo_at_lo | lo_at_hi)
    load_hi = mask & ~(hi_at_hi | hi_at_lo)
    v_ll = tl.where(lo_at_lo, c_ll, tl.where(lo_at_hi, c_lh,
                    tl.load(row_lo + x_lo, mask=load_lo, other=0.0).to(DT)))  # fmt: skip
    v_hl = tl.where(lo_at_lo, c_hl, tl.where(lo_at_hi, c_hh,
                    tl.load(row_hi + x_lo, mask=load_lo, other=0.0).to(DT)))  # fmt: skip
    v_lh = tl.where(hi_at_hi, c_lh, tl.where(hi_at_lo, c_ll,
                    tl.load(row_lo + x_hi, mask=load_hi, other=0.0).to(DT)))  # fmt: skip
    v_hh = tl.where(hi_at_hi, c_hh, tl.where(hi_at_lo, c_hl,
                    tl.load(row_hi + x_hi, mask=load_hi, other=0.0).to(DT)))  # fmt: skip
    return v_ll, v_lh, v_hl, v_hh, tl.where(mask, x_lo, -1), tl.where(mask, x_hi, -1)


@triton.jit
def _pool_sample(acc, best_s, v, candidate, first, MAX_MODE: tl.constexpr):
    """Fold a sample's value v into the bin: a sum, or the maximum and its argmax
    candidate (the first maximum wins; a sample outside the map takes part with value 0)."""
    if MAX_MODE:
        wins = first | (v > acc)
        acc = tl.where(wins, v, acc)
        best_s = tl.where(wins, candidate, best_s)
    else:
        acc += v
    return acc, best_s


@triton.jit
def _bin_value(acc, count, valid, MAX_MODE: tl.constexpr):
    """The bin's output: the mean of its samples (an empty grid gives 0) or their maximum;
    NaN for an invalid RoI (visible, not silently zero)."""
    if not MAX_MODE:
        acc = div_rn(acc, tl.maximum(count, 1).to(acc.dtype))
    return tl.where(valid, acc, float("nan"))


@triton.jit
def input_channel(c, p, C, P: tl.constexpr, PS: tl.constexpr):
    """(c_in, C_in): the input channel that output channel c's bin p reads, and the
    input's channel count; position-sensitive (PS) pooling gives every bin its own
    channel, ``c * P + p`` (R-FCN)."""
    if PS:
        c_in = c * P + p
        C_in = C * P
    else:
        c_in = c
        C_in = C
    return c_in, C_in


@kernel
def roi_align_forward_kernel(
    X, ROIS, OUT, ARGMAX,
    N, C, H, W, scale_bits, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
    PS: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False, REUSE: tl.constexpr = False,
    REUSE_MIN: tl.constexpr = 0,
):  # fmt: skip
    """OUT[K, C, PH, PW] (and ARGMAX[K, PH, PW, C] in max mode, channel-major) from
    X[N, C, H, W]; with PS (position-sensitive) from X[N, C * PH * PW, H, W], bin p of
    channel c reading input channel c * PH * PW + p. REUSE, REUSE_MIN: ``reuse_loads``."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    forward_bins(X, ROIS, OUT, ARGMAX, k, c, p, ok, N, C, H, W, scale_bits, sampling_ratio,
                 True, PH, PW, ALIGNED, MAX_MODE, PS, BLOCK, REUSE, REUSE_MIN)  # fmt: skip


@triton.jit
def _row_of_points(acc, best_s, row_lo, row_hi, wy_lo, wy_hi, y_in, iy, start_w, bin_w, pw,
                   gw, W, MAX_MODE: tl.constexpr, REUSE: tl.constexpr):  # fmt: skip
    """``(acc, best_s)`` after row iy of a bin's sampling points (``gw`` of them, between
    map rows ``row_lo`` and ``row_hi``, weighted ``wy_lo`` and ``wy_hi``; ``y_in``: the
    row is within a cell of the map, and the lane's output exists). REUSE: each point
    takes the columns the previous one loaded (``_reused_corners``)."""
    if REUSE:  # (the columns the row's previous point loaded, none yet, their values)
        seen_lo = tl.full(acc.shape, -1, tl.int32)
        seen_hi = seen_lo
        c_ll = tl.zeros(acc.shape, acc.dtype)
        c_lh = c_ll
        c_hl = c_ll
        c_hh = c_ll
    for ix in range(0, gw):
        x_lo, x_hi, wx_lo, wx_hi, x_in = axis_sample(start_w, bin_w, pw, ix, gw, W)
        inside = y_in & x_in
        if REUSE:
            v_ll, v_lh, v_hl, v_hh, seen_lo, seen_hi = _reused_corners(
                row_lo, row_hi, x_lo, x_hi, inside, seen_lo, seen_hi, c_ll, c_lh, c_hl, c_hh,
                acc.dtype,
            )  # fmt: skip
            c_ll, c_lh, c_hl, c_hh = v_ll, v_lh, v_hl, v_hh
        else:
            v_ll, v_lh, v_hl, v_hh = _corners(row_lo, row_hi, x_lo, x_hi, inside, acc.dtype)
        s = iy * gw + ix
        v, candidate = _sample_value(v_ll, v_lh, v_hl, v_hh, wy_lo, wy_hi, wx_lo, wx_hi, s,
                                     MAX_MODE)  # fmt: skip
        acc, best_s = _pool_sample(acc, best_s, tl.where(inside, v, 0.0), candidate, s == 0,
                                   MAX_MODE)  # fmt: skip
    return acc, best_s


@triton.jit
def forward_bins(X, ROIS, OUT, ARGMAX, k, c, p, ok, N, C, H, W, scale_bits, sampling_ratio,
                 usable, PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr,
                 MAX_MODE: tl.constexpr, PS: tl.constexpr, BLOCK: tl.constexpr,
                 REUSE: tl.constexpr = False, REUSE_MIN: tl.constexpr = 0):  # fmt: skip
    """The forward of RoI k's outputs (c, p) from NCHW X: the body of
    ``roi_align_forward_kernel``, shared with the FPN pooler's kernel. REUSE: a point
    takes the columns the previous point of its row loaded from it (``_reused_corners``),
    where the RoI's rows have at least REUSE_MIN points (a branch on RoI k's grid, the
    same for the whole program: a program's outputs are one RoI's)."""
    ph = p // PW
    pw = p % PW
    n, start_h, start_w, bin_h, bin_w, gh, gw, valid = _roi_geometry(
        ROIS, k, N, scale_bits, sampling_ratio, usable, PH, PW, ALIGNED
    )
    c_in, C_in = input_channel(c, p, C, PH * PW, PS)
    plane = X + (n * C_in + c_in.to(tl.int64)) * H * W
    acc = tl.zeros((BLOCK,), dtype=tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64)
    best_s = tl.full((BLOCK,), -1, tl.int32)
    for iy in range(0, gh):
        y_lo, y_hi, wy_lo, wy_hi, y_in = axis_sample(start_h, bin_h, ph, iy, gh, H)
        row_lo = plane + y_lo * W
        row_hi = plane + y_hi * W
        y_in = y_in & ok
        if REUSE and REUSE_MIN > 1:
            if gw >= REUSE_MIN:
                acc, best_s = _row_of_points(acc, best_s, row_lo, row_hi, wy_lo, wy_hi, y_in,
                                             iy, start_w, bin_w, pw, gw, W, MAX_MODE,
                                             True)  # fmt: skip
            else:
                acc, best_s = _row_of_points(acc, best_s, row_lo, row_hi, wy_lo, wy_hi, y_in,
                                             iy, start_w, bin_w, pw, gw, W, MAX_MODE,
                                             False)  # fmt: skip
        else:
            acc, best_s = _row_of_points(acc, best_s, row_lo, row_hi, wy_lo, wy_hi, y_in, iy,
                                         start_w, bin_w, pw, gw, W, MAX_MODE, REUSE)  # fmt: skip
    acc = _bin_value(acc, gh * gw, valid, MAX_MODE)
    store_bins(OUT, ARGMAX, acc, best_s, k, c, p, ok, C, PH * PW, MAX_MODE)


@kernel
def roi_align_forward_nhwc_kernel(
    X, ROIS, OUT, ARGMAX,
    N, C, H, W, scale_bits, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
    PS: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] (and ARGMAX[K, PH, PW, C] in max mode, channels last) from
    channels-last X[N, H, W, C] (PS: as for ``roi_align_forward_kernel``): one program
    per (RoI, bin, block of channels), the bin's sampling grid in scalars and the lanes
    over channels, so each neighbour's load and the argmax's store are contiguous."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    ph = p // PW
    pw = p % PW
    n, start_h, start_w, bin_h, bin_w, gh, gw, valid = _roi_geometry(
        ROIS, k, N, scale_bits, sampling_ratio, True, PH, PW, ALIGNED
    )
    c_in, C_in = input_channel(c, p, C, PH * PW, PS)
    image = X + n * H * W * C_in + c_in
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64)
    best_s = tl.full((BLOCK_C,), -1, tl.int32)
    for iy in range(0, gh):
        y_lo, y_hi, wy_lo, wy_hi, y_in = axis_sample(start_h, bin_h, ph, iy, gh, H)
        for ix in range(0, gw):
            x_lo, x_hi, wx_lo, wx_hi, x_in = axis_sample(start_w, bin_w, pw, ix, gw, W)
            s = iy * gw + ix
            v = tl.zeros((BLOCK_C,), dtype=acc.dtype)
            candidate = tl.zeros((BLOCK_C,), tl.int32) + s * (4 if MAX_MODE == ONNX_MAX else 1)
            if y_in & x_in:
                row_lo = image + y_lo.to(tl.int64) * W * C_in
                row_hi = image + y_hi.to(tl.int64) * W * C_in
                v_ll, v_lh, v_hl, v_hh = _corners(row_lo, row_hi, x_lo * C_in, x_hi * C_in, c_ok,
                                                  acc.dtype)  # fmt: skip
                v, candidate = _sample_value(v_ll, v_lh, v_hl, v_hh, wy_lo, wy_hi, wx_lo, wx_hi,
                                             s, MAX_MODE)  # fmt: skip
            acc, best_s = _pool_sample(acc, best_s, v, candidate, s == 0, MAX_MODE)
    acc = _bin_value(acc, gh * gw, valid, MAX_MODE)
    store_bins(OUT, ARGMAX, acc, best_s, k, c, p, c_ok, C, PH * PW, MAX_MODE, False)


@triton.jit
def _cell_weights(start, bin_size, bin_index, grid, limit, first, SPAN: tl.constexpr):
    """[SPAN]: the summed bilinear weights that the ``grid`` points of bin ``bin_index``
    along one axis give cells ``first .. first + SPAN - 1`` (a point more than one cell
    outside the map gives none)."""
    return _weights_at(start, bin_size, bin_index, grid, limit, first + tl.arange(0, SPAN))


@triton.jit
def _weights_at(start, bin_size, bin_index, grid, limit, cells):
    """``_cell_weights`` at any vector of ``cells`` (the same sums in the same order)."""
    weights = tl.zeros(cells.shape, dtype=start.dtype)
    for i in range(0, grid):
        low, high, w_low, w_high, inside = axis_sample(start, bin_size, bin_index, i, grid, limit)
        weights += tl.where(cells == low, tl.where(inside, w_low, 0.0), 0.0)
        weights += tl.where(cells == high, tl.where(inside, w_high, 0.0), 0.0)
    return weights


@triton.jit
def _lanes_cell_weights(start, bin_size, bin_index, grid, limit, first, SPAN: tl.constexpr):
    """[SPAN, lanes]: ``_cell_weights`` of each lane's bin ``bin_index`` over its cells
    ``first .. first + SPAN - 1`` (per lane; the same sums in the same order). The lanes
    go last, so that Triton lays the tile out with a lane's SPAN weights in one thread
    (lanes first, it put 8 threads along SPAN: every weight picked was a reduction
    across threads)."""
    cells = tl.arange(0, SPAN)[:, None] + first[None, :]
    weights = tl.zeros(cells.shape, dtype=start.dtype)
    for i in range(0, grid):
        low, high, w_low, w_high, inside = axis_sample(start, bin_size, bin_index, i, grid, limit)
        weights += tl.where(cells == low[None, :], tl.where(inside, w_low, 0.0)[None, :], 0.0)
        weights += tl.where(cells == high[None, :], tl.where(inside, w_high, 0.0)[None, :], 0.0)
    return weights


@triton.jit
def _cell_range(start, bin_size, bin_index, grid, limit):
    """[first, last]: the cells the bin's points along one axis can touch (points run
    forwards, or backwards in an inverted aligned RoI: the ends bound them)."""
    low_a, high_a, _, _, _ = axis_sample(start, bin_size, bin_index, 0, grid, limit)
    low_b, high_b, _, _, _ = axis_sample(start, bin_size, bin_index, grid - 1, grid, limit)
    return tl.minimum(low_a, low_b), tl.maximum(high_a, high_b)


@kernel
def roi_align_regions_kernel(
    ROIS, RECTS, PARTS, FLAGS, K, N, H, W, scale_bits, flag_count, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """RoIAlign's ``roiops.gpu.fixed_point.Regions``: RECTS[k] = the cells that RoI k's
    sampling points can touch (``_cell_range`` of its first and last bins along each
    axis: the points run monotonically through the bins, forwards or, in an inverted
    aligned RoI, backwards), the areas' pieces and the flags zeroed (``finish_plan``);
    one of REGION_PARTS programs, BLOCK RoIs a round, every REGION_PARTS-th round. A RoI
    without points (invalid, or an empty adaptive grid) has an empty region."""
    areas = tl.zeros((BLOCK,), tl.int64)
    largest = tl.zeros((BLOCK,), tl.int64)
    for i in range(0, region_rounds(K, BLOCK)):
        k, in_range, readable = region_rois(i, K, BLOCK)
        n, start_h, start_w, bin_h, bin_w, grid_h, grid_w, valid = _roi_geometry(
            ROIS, readable, N, scale_bits, sampling_ratio, True, PH, PW, ALIGNED
        )
        valid = valid & (grid_h > 0) & (grid_w > 0)
        grid_h = tl.maximum(grid_h, 1)  # (a RoI without points: no division by 0)
        grid_w = tl.maximum(grid_w, 1)
        h0, h1 = _cell_range(start_h, bin_h, 0, grid_h, H)
        last_h0, last_h1 = _cell_range(start_h, bin_h, PH - 1, grid_h, H)
        w0, w1 = _cell_range(start_w, bin_w, 0, grid_w, W)
        last_w0, last_w1 = _cell_range(start_w, bin_w, PW - 1, grid_w, W)
        areas, largest = record_regions(
            RECTS, k, in_range, n, tl.minimum(h0, last_h0), tl.maximum(h1, last_h1) + 1,
            tl.minimum(w0, last_w0), tl.maximum(w1, last_w1) + 1, valid, H, W, areas, largest,
        )  # fmt: skip
    finish_plan(PARTS, FLAGS, areas, largest, flag_count)


@triton.jit
def _pick(values, i):
    """values[i] as a scalar."""
    return tl.sum(tl.where(tl.arange(0, values.shape[0]) == i, values, 0.0), axis=0)


@kernel
def roi_align_backward_kernel(
    G, ROIS, ARGMAX, AMAX, ACC,
    N, C, H, W, scale_bits, sampling_ratio, log2_count,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
    PS: tl.constexpr, BLOCK_C: tl.constexpr, SPAN: tl.constexpr, ARGMAX_CM: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += the input gradient of one (RoI, bin, block
    of channels), from G[K, C, PH, PW] (and ARGMAX[K, PH, PW, C] in max mode, lying
    channel-major if ARGMAX_CM); with PS, ACC[N, H, W, C * PH * PW] and bin p of channel
    c feeds channel c * PH * PW + p."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    backward_bin(G, ROIS, ARGMAX, AMAX, ACC, k, p, c, c_ok, N, C, H, W, scale_bits,
                 sampling_ratio, log2_count, True, PH, PW, ALIGNED, MAX_MODE, PS,
                 SPAN, ARGMAX_CM)  # fmt: skip


@kernel
def ps_roi_align_backward_kernel(
    G, ROIS, AMAX, ACC, N, C, H, W, scale_bits, sampling_ratio, log2_count,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
    SPAN: tl.constexpr, ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """``roi_align_backward_kernel``'s position-sensitive average (ps_roi_align), with a
    block of BLOCK of one RoI's outputs a program instead of one bin, lane (p, c) bin p
    of output channel c, channels innermost (``roi_outputs_tile``): each lane sums its
    bin's weights per cell as that kernel does (SPAN x SPAN windows, the same sums), and
    adds one atomic per cell with a weight, into ACC[N, H, W, C * PH * PW]'s channel
    ``p * C + c`` (``Accumulator(bins=PH * PW)``); the same contributions, so the same
    bits."""
    P: tl.constexpr = PH * PW
    k, p, c, ok = roi_outputs_tile(C, P, BLOCK, ROIS_INNER)
    n, start_h, start_w, bin_h, bin_w, gh, gw, valid = _roi_geometry(
        ROIS, k, N, scale_bits, sampling_ratio, True, PH, PW, ALIGNED
    )
    ph = p // PW
    pw = p % PW
    g_at, _ = output_offsets(k, c, p, C, P)
    dt = start_h.dtype
    g = tl.load(G + g_at, mask=ok, other=0.0).to(dt)
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    c_acc, C_acc = accumulator_channel(c, p, C, P, True)
    channel = ACC + n * H * W * C_acc + c_acc
    if (gh > 0) & (gw > 0):
        g = div_rn(g, (gh * gw).to(dt))
        y_first, y_last = _cell_range(start_h, bin_h, ph, gh, H)
        x_first, x_last = _cell_range(start_w, bin_w, pw, gw, W)
        # the windows cover every lane's cells; past a lane's own, its weights are 0
        rows = tl.max(tl.where(ok, y_last + 1 - y_first, 0), axis=0)
        cols = tl.max(tl.where(ok, x_last + 1 - x_first, 0), axis=0)
        span = tl.arange(0, SPAN)[:, None]
        for y0 in range(0, rows, SPAN):
            a_y = _lanes_cell_weights(start_h, bin_h, ph, gh, H, y_first + y0, SPAN)
            for x0 in range(0, cols, SPAN):
                a_x = _lanes_cell_weights(start_w, bin_w, pw, gw, W, x_first + x0, SPAN)
                for dy in range(0, tl.minimum(SPAN, rows - y0)):
                    w_row = tl.sum(tl.where(span == dy, a_y, 0.0), axis=0)
                    row = (y_first + y0 + dy).to(tl.int64) * W + x_first + x0
                    for dx in range(0, tl.minimum(SPAN, cols - x0)):
                        w = w_row * tl.sum(tl.where(span == dx, a_x, 0.0), axis=0)
                        add_to_cell(channel, row + dx, C_acc, g * w, scale, ok & (w != 0))


@triton.jit
def backward_bin(G, ROIS, ARGMAX, AMAX, ACC, k, p, c, c_ok, N, C, H, W, scale_bits,
                 sampling_ratio, log2_count, usable, PH: tl.constexpr, PW: tl.constexpr,
                 ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr, PS: tl.constexpr,
                 SPAN: tl.constexpr, ARGMAX_CM: tl.constexpr):  # fmt: skip
    """The backward of RoI k's bin p for channels c into the NHWC accumulator ACC: the
    body of ``roi_align_backward_kernel``, shared with the FPN pooler's kernel."""
    ph = p // PW
    pw = p % PW
    n, start_h, start_w, bin_h, bin_w, gh, gw, valid = _roi_geometry(
        ROIS, k, N, scale_bits, sampling_ratio, usable, PH, PW, ALIGNED
    )
    g_at, argmax_at = output_offsets(k, c, p, C, PH * PW, ARGMAX_CM)
    dt = start_h.dtype
    g = tl.load(G + g_at, mask=c_ok, other=0.0).to(dt)
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    c_acc, C_acc = accumulator_channel(c, p, C, PH * PW, PS)
    channel = ACC + n * H * W * C_acc + c_acc  # + cell * C_acc
    if MAX_MODE:
        s = tl.load(ARGMAX + argmax_at, mask=c_ok, other=-1)
        corner = tl.full(s.shape, -1, tl.int32)  # -1: all four corners
        if MAX_MODE == ONNX_MAX:
            corner = tl.where(s >= 0, s % 4, -1)
            s = tl.where(s >= 0, s // 4, -1)  # (// truncates: -1 // 4 would be 0)
        iy = s // tl.maximum(gw, 1)
        ix = s % tl.maximum(gw, 1)
        y_lo, y_hi, wy_lo, wy_hi, y_in = axis_sample(start_h, bin_h, ph, iy, gh, H)
        x_lo, x_hi, wx_lo, wx_hi, x_in = axis_sample(start_w, bin_w, pw, ix, gw, W)
        # -1 (invalid RoI) or out-of-range winners route nothing
        ok = c_ok & (s >= 0) & (s < gh * gw) & y_in & x_in
        row_lo = y_lo.to(tl.int64) * W
        row_hi = y_hi.to(tl.int64) * W
        all_four = corner < 0
        add_to_cell(channel, row_lo + x_lo, C_acc, g * (wy_lo * wx_lo), scale,
                    ok & (all_four | (corner == 0)))  # fmt: skip
        add_to_cell(channel, row_lo + x_hi, C_acc, g * (wy_lo * wx_hi), scale,
                    ok & (all_four | (corner == 1)))  # fmt: skip
        add_to_cell(channel, row_hi + x_lo, C_acc, g * (wy_hi * wx_lo), scale,
                    ok & (all_four | (corner == 2)))  # fmt: skip
        add_to_cell(channel, row_hi + x_hi, C_acc, g * (wy_hi * wx_hi), scale,
                    ok & (all_four | (corner == 3)))  # fmt: skip
    else:
        if (gh > 0) & (gw > 0):
            g = div_rn(g, (gh * gw).to(dt))
            y_first, y_last = _cell_range(start_h, bin_h, ph, gh, H)
            x_first, x_last = _cell_range(start_w, bin_w, pw, gw, W)
            # windows of SPAN x SPAN cells; one window holds every bin up to ~SPAN - 2 cells
            for y0 in range(y_first, y_last + 1, SPAN):
                a_y = _cell_weights(start_h, bin_h, ph, gh, H, y0, SPAN)
                for x0 in range(x_first, x_last + 1, SPAN):
                    a_x = _cell_weights(start_w, bin_w, pw, gw, W, x0, SPAN)
                    for dy in range(0, tl.minimum(SPAN, y_last + 1 - y0)):
                        w_row = _pick(a_y, dy)
                        if w_row != 0:
                            row = tl.cast(y0 + dy, tl.int64) * W
                            for dx in range(0, tl.minimum(SPAN, x_last + 1 - x0)):
                                w = w_row * _pick(a_x, dx)
                                if w != 0:
                                    add_to_cell(channel, row + x0 + dx, C_acc, g * w, scale,
                                                c_ok)  # fmt: skip


# ----------------------------------------------------------------------------- launchers
def roi_align_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
                      max_mode, position_sensitive=False):  # fmt: skip
    """``(out[K, C, ph, pw], argmax[K, ph, pw, C] or None)``; ``max_mode``: AVG (False),
    MAX (True) or ONNX_MAX; a channels_last ``input`` is read as it lies (NHWC kernel; the
    argmax channels last), any other is made NCHW-contiguous (the argmax channel-major). With
    ``position_sensitive``, ``out`` is ``[K, C // (ph * pw), ph, pw]`` (ps_roi_align)."""
    K = rois.shape[0]
    sizes = input.shape
    C = sizes[1] // (pooled_h * pooled_w) if position_sensitive else sizes[1]
    shape = (K, C, pooled_h, pooled_w)
    out = input.new_empty(shape)
    nhwc = is_channels_last(input)
    # avg mode stores no argmax: the kernel gets ``out`` in its place and never writes it
    argmax = new_argmax(input, shape, channel_major=not nhwc) if max_mode else None
    rois_inner = tiles.GATHER_ROIS_INNER if nhwc else tiles.forward_rois_inner(sampling_ratio <= 0)
    launch = _forward_launch(sizes, input.dtype, input.get_device(), K, nhwc, spatial_scale,
                             pooled_h, pooled_w, sampling_ratio, aligned, max_mode,
                             position_sensitive, rois_inner,
                             *reuse_loads(sampling_ratio))  # fmt: skip
    launch(input if nhwc else input.contiguous(), rois, out, out if argmax is None else argmax)
    return out, argmax


@tiles.cached
def _forward_launch(sizes, dtype, device, K, nhwc, spatial_scale, pooled_h, pooled_w,
                    sampling_ratio, aligned, max_mode, position_sensitive, rois_inner,
                    reuse, reuse_min) -> Launch:  # fmt: skip
    """``roi_align_forward``'s launch for a map of ``sizes`` (N, C, H, W) of ``dtype`` on
    ``device`` (those two keep apart the launches of different tensors), K RoIs, these
    parameters and settings: its tensors ``(input, rois, out, argmax or out)``."""
    N, C, H, W = sizes
    if position_sensitive:
        C //= pooled_h * pooled_w
    values = (N, C, H, W, scale_bits(spatial_scale), sampling_ratio)
    mode = dict(PH=pooled_h, PW=pooled_w, ALIGNED=aligned, MAX_MODE=max_mode,
                PS=position_sensitive, ROIS_INNER=rois_inner)  # fmt: skip
    if nhwc:
        grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "roi_align",
                                                     forward=True)  # fmt: skip
        return Launch(roi_align_forward_nhwc_kernel, grid, values, **mode, BLOCK_C=block_c,
                      num_warps=num_warps)  # fmt: skip
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "roi_align",
                                       adaptive=sampling_ratio <= 0)  # fmt: skip
    return Launch(roi_align_forward_kernel, grid, values, **mode, BLOCK=block, REUSE=reuse,
                  REUSE_MIN=reuse_min, num_warps=num_warps)  # fmt: skip


def roi_align_backward(grad, rois, argmax, grad_input, spatial_scale, pooled_h, pooled_w,
                       sampling_ratio, aligned, position_sensitive=False,
                       onnx_max=False):  # fmt: skip
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]`` (with
    ``position_sensitive``, ``grad_input`` has ``C * ph * pw`` channels; an ``argmax``
    selects max mode, ``onnx_max`` ONNX's max); with REGIONS, not position-sensitive,
    the sums in the RoIs' regions (``roi_align_regions``)."""
    regions = None
    if REGIONS and not position_sensitive:
        regions = roi_align_regions(rois, grad_input.shape, spatial_scale, pooled_h, pooled_w,
                                    sampling_ratio, aligned)  # fmt: skip
    sums = Accumulator(grad, grad_input.shape, regions=regions,
                       bins=pooled_h * pooled_w if position_sensitive else 1)  # fmt: skip
    roi_align_scatter(sums, grad, rois, argmax, spatial_scale, pooled_h, pooled_w,
                      sampling_ratio, aligned, position_sensitive, onnx_max)  # fmt: skip
    return sums.write_to(grad_input)


def roi_align_regions(rois, shape, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                      aligned) -> Regions:  # fmt: skip
    """The ``Regions`` of ``rois`` on a map of ``shape`` (N, C, H, W), filled by
    ``roi_align_regions_kernel``."""
    return Regions.found_by(roi_align_regions_kernel, rois, shape, spatial_scale,
                            sampling_ratio, PH=pooled_h, PW=pooled_w, ALIGNED=aligned)  # fmt: skip


def roi_align_scatter(sums: Accumulator, grad, rois, argmax, spatial_scale, pooled_h,
                      pooled_w, sampling_ratio, aligned, position_sensitive=False,
                      onnx_max=False):  # fmt: skip
    """Add the contributions of ``grad[K, C, ph, pw]`` into ``sums.acc`` (the arguments
    as for ``roi_align_backward``; position-sensitive, the sums go bin by bin,
    ``Accumulator(bins=ph * pw)``)."""
    N, H, W = sums.acc.shape[:3]
    K, C = grad.shape[:2]
    bins = pooled_h * pooled_w if position_sensitive else 1
    assert sums.bins == bins, "a position-sensitive sum goes bin by bin, another by channel"
    max_mode = ONNX_MAX_MODE if onnx_max else argmax is not None
    argmax, channel_major = readable_argmax(argmax) if max_mode else (rois, True)
    lanes = position_sensitive and PS_LANES  # (position-sensitive: average mode)
    launch = _scatter_launch(K, C, N, H, W, grad.dtype, grad.get_device(), spatial_scale,
                             pooled_h, pooled_w, sampling_ratio, aligned, max_mode,
                             position_sensitive, channel_major, sums.log2_count, lanes, SPAN,
                             tiles.SCATTER_ROIS_INNER)  # fmt: skip
    if lanes:
        launch(grad.contiguous(), rois, sums.amax, sums.acc)
    else:
        launch(grad.contiguous(), rois, argmax, sums.amax, sums.acc)


@tiles.cached
def _scatter_launch(K, C, N, H, W, dtype, device, spatial_scale, pooled_h, pooled_w,
                    sampling_ratio, aligned, max_mode, position_sensitive, channel_major,
                    log2_count, ps_lanes, span, rois_inner) -> Launch:  # fmt: skip
    """``roi_align_scatter``'s launch for ``grad[K, C, ph, pw]`` of ``dtype`` on
    ``device`` into an accumulator of N images of H x W cells, these parameters and
    settings: its tensors ``(grad, rois, argmax or rois, amax, acc)``, or with
    ``ps_lanes`` (position-sensitive lanes over a RoI's outputs) ``(grad, rois, amax,
    acc)``."""
    values = (N, C, H, W, scale_bits(spatial_scale), sampling_ratio, log2_count)
    mode = dict(PH=pooled_h, PW=pooled_w, ALIGNED=aligned, SPAN=span, ROIS_INNER=rois_inner)
    if ps_lanes:
        grid, block, num_warps = roi_outputs_grid(K, C * pooled_h * pooled_w, "ps_roi_align")
        return Launch(ps_roi_align_backward_kernel, grid, values, **mode, BLOCK=block,
                      num_warps=num_warps)  # fmt: skip
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "roi_align")
    return Launch(roi_align_backward_kernel, grid, values, **mode, MAX_MODE=max_mode,
                  PS=position_sensitive, BLOCK_C=block_c, ARGMAX_CM=channel_major,
                  num_warps=num_warps)  # fmt: skip


@triton.jit
def _edge_slope(v, limit):
    """(low, high, frac, flat) of coordinate v along one axis, as ``bilinear_axis``
    places it, and whether the value is flat in v there (clamped to the map's start or
    end, where the bilinear surface does not move with v)."""
    low, high, _, frac = bilinear_axis(v, limit)
    return low, high, frac, (v <= 0) | (low == high)


@kernel
def roi_align_box_backward_kernel(
    G, X, ROIS, ARGMAX, PARTIAL, N, C, H, W, scale_bits, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
    BLOCK_C: tl.constexpr, ARGMAX_CM: tl.constexpr,
):  # fmt: skip
    """PARTIAL[program, 4] = one (RoI, bin, block of channels)'s share of the gradient
    w.r.t. (x1, y1, x2, y2) (``roiops.reference.roi_align.roi_align_box_backward``); the
    launcher sums the programs of a RoI in a fixed order (no atomics)."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C)
    ph = p // PW
    pw = p % PW
    n, start_h, start_w, bin_h, bin_w, gh, gw, valid = _roi_geometry(
        ROIS, k, N, scale_bits, sampling_ratio, True, PH, PW, ALIGNED
    )
    dt = start_h.dtype
    spatial_scale = from_bits(scale_bits, dt)
    g_at, argmax_at = output_offsets(k, c, p, C, PH * PW, ARGMAX_CM)
    g = tl.load(G + g_at, mask=c_ok, other=0.0).to(dt)
    if MAX_MODE:
        winner = tl.load(ARGMAX + argmax_at, mask=c_ok, other=-1)
    else:
        g = div_rn(g, tl.maximum(gh * gw, 1).to(dt))
        winner = tl.zeros_like(c) - 1
    roi = ROIS + k.to(tl.int64) * 5
    # legacy boxes under one cell are forced to 1x1: their size does not move
    moves_h = (tl.load(roi + 4) * spatial_scale - tl.load(roi + 2) * spatial_scale > 1) | ALIGNED
    moves_w = (tl.load(roi + 3) * spatial_scale - tl.load(roi + 1) * spatial_scale > 1) | ALIGNED
    plane = X + (n * C + c.to(tl.int64)) * H * W
    gx1 = tl.zeros((), dt)
    gy1 = tl.zeros((), dt)
    gx2 = tl.zeros((), dt)
    gy2 = tl.zeros((), dt)
    for iy in range(0, gh):
        y = (start_h + ph * bin_h) + div_rn((iy + 0.5) * bin_h, gh)
        t_y = div_rn(ph + div_rn(tl.cast(iy + 0.5, dt), gh), PH * 1.0)
        y_lo, y_hi, ly, flat_y = _edge_slope(y, H)
        for ix in range(0, gw):
            x = (start_w + pw * bin_w) + div_rn((ix + 0.5) * bin_w, gw)
            t_x = div_rn(pw + div_rn(tl.cast(ix + 0.5, dt), gw), PW * 1.0)
            x_lo, x_hi, lx, flat_x = _edge_slope(x, W)
            inside = (y >= -1.0) & (y <= H) & (x >= -1.0) & (x <= W)
            m = tl.where(inside, c_ok, False)  # (a scalar & a vector trips the interpreter)
            if MAX_MODE:
                m = m & (winner == iy * gw + ix)
            v1 = tl.load(plane + y_lo * W + x_lo, mask=m, other=0.0).to(dt)
            v2 = tl.load(plane + y_lo * W + x_hi, mask=m, other=0.0).to(dt)
            v3 = tl.load(plane + y_hi * W + x_lo, mask=m, other=0.0).to(dt)
            v4 = tl.load(plane + y_hi * W + x_hi, mask=m, other=0.0).to(dt)
            share = tl.where(m, g, 0.0)
            dy = tl.where(flat_y, 0.0, (1.0 - lx) * (v3 - v1) + lx * (v4 - v2))
            dx = tl.where(flat_x, 0.0, (1.0 - ly) * (v2 - v1) + ly * (v4 - v3))
            gy = tl.sum(share * dy, axis=0) * spatial_scale
            gx = tl.sum(share * dx, axis=0) * spatial_scale
            gy1 += tl.where(moves_h, gy * (1.0 - t_y), gy)
            gy2 += tl.where(moves_h, gy * t_y, 0.0)
            gx1 += tl.where(moves_w, gx * (1.0 - t_x), gx)
            gx2 += tl.where(moves_w, gx * t_x, 0.0)
    out = PARTIAL + tl.program_id(0).to(tl.int64) * 4
    tl.store(out, gx1)
    tl.store(out + 1, gy1)
    tl.store(out + 2, gx2)
    tl.store(out + 3, gy2)


def roi_align_box_backward(grad, input, rois, argmax, spatial_scale, pooled_h, pooled_w,
                           sampling_ratio, aligned):  # fmt: skip
    """``Tensor[K, 5]``: the gradient w.r.t. ``rois`` (column 0 is 0), deterministic."""
    K = rois.shape[0]
    N, C, H, W = input.shape
    max_mode = argmax is not None
    argmax, channel_major = readable_argmax(argmax) if max_mode else (rois, True)
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "roi_align")
    partial = rois.new_empty((grid[0], 4))
    roi_align_box_backward_kernel[grid](
        grad.contiguous(), input.contiguous(), rois, argmax, partial,
        N, C, H, W, scale_bits(spatial_scale), sampling_ratio,
        PH=pooled_h, PW=pooled_w, ALIGNED=aligned, MAX_MODE=max_mode, BLOCK_C=block_c,
        ARGMAX_CM=channel_major, num_warps=num_warps,
    )  # fmt: skip
    # each RoI's programs are consecutive: a plain sum over them, in a fixed order
    sums = partial.view(K, -1, 4).sum(dim=1)
    return torch.cat([torch.zeros_like(sums[:, :1]), sums], dim=1)
