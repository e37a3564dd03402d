"""RoIAlign's sampling grid and bilinear weights for the Numba kernels.

The grid is separable: a sampling point's row only depends on (ph, iy) and its column
only on (pw, ix), and the bilinear weight of a corner is the product of a row weight
and a column weight (hy * hx, ...). So each RoI gets two small per-axis tables instead
of torchvision's per-point table, and a point's four weights are formed as products
in the inner loop, with the same values as torchvision's.

Arithmetic is in the input dtype ``T`` and in torchvision's order (see
``roiops.reference.roi_align``), which the tests check bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from roiops.cpu.parallel import parallel_njit


@njit(cache=True)
def roi_align_geometry(
    rois, k, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
):
    """(start_h, start_w, bin_size_h, bin_size_w, grid_h, grid_w) of RoI ``k``."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    offset = T(0.5) if aligned else T(0.0)
    start_w = rois[k, 1] * scale - offset
    start_h = rois[k, 2] * scale - offset
    width = (rois[k, 3] * scale - offset) - start_w
    height = (rois[k, 4] * scale - offset) - start_h
    if not aligned:
        # legacy convention: malformed RoIs are forced to 1x1 cell
        width = max(width, T(1.0))
        height = max(height, T(1.0))
    bin_size_h = height / T(pooled_height)
    bin_size_w = width / T(pooled_width)
    if sampling_ratio > 0:
        grid_h = sampling_ratio
        grid_w = sampling_ratio
    else:
        # adaptive: ceil(bin size) points per axis; negative sizes give an empty grid
        grid_h = max(math.ceil(bin_size_h), 0)
        grid_w = max(math.ceil(bin_size_w), 0)
    return start_h, start_w, bin_size_h, bin_size_w, grid_h, grid_w


@njit(cache=True)
def bilinear_axis(v, limit, T):
    """(low, high, w_low, w_high) of coordinate v along one axis: the two cells around it
    and their bilinear weights, v first clamped into the map (``roiops.reference.
    roi_align.bilinear_weights``; whether v is within a cell of the map is the caller's
    test). At the map's end both cells are the last one, with weights (1, 0)."""
    if v <= 0:
        v = T(0)
    low = int(v)
    if low >= limit - 1:
        low = limit - 1
        high = low
        v = T(low)
    else:
        high = low + 1
    frac = v - T(low)
    return low, high, T(1) - frac, frac


@njit(cache=True)
def fill_axis(start, bin_size, pooled, grid, limit, T, low, high, w_low, w_high, valid):
    """Write one axis' bilinear table into the flat arrays ``low[pooled * grid]``, ...:
    entry ``p * grid + i`` is point i of bin p (see ``axis_samples``)."""
    for p in range(pooled):
        for i in range(grid):
            at = p * grid + i
            v = (start + T(p) * bin_size) + T(i + 0.5) * bin_size / T(grid)
            if not (v >= -1.0 and v <= limit):
                low[at], high[at], w_low[at], w_high[at], valid[at] = 0, 0, 0, 0, False
                continue
            valid[at] = True
            low[at], high[at], w_low[at], w_high[at] = bilinear_axis(v, limit, T)


@njit(cache=True)
def axis_samples(start, bin_size, pooled, grid, limit, dtype_probe):
    """Per-axis bilinear table for ``pooled`` bins x ``grid`` points along one axis.

    Returns ``(low, high, w_low, w_high, valid)``, each ``[pooled, grid]``: the two
    neighbouring cell indices of every point, their weights (1 - d and d), and whether
    the point lies within one cell of the map, [-1, limit]; a point outside contributes
    zero. Inside, the point is clamped to [0, limit - 1].
    """
    T = dtype_probe.dtype.type
    size = pooled * grid
    low = np.empty(size, np.int64)
    high = np.empty(size, np.int64)
    w_low = np.empty(size, dtype_probe.dtype)
    w_high = np.empty(size, dtype_probe.dtype)
    valid = np.empty(size, np.bool_)
    fill_axis(start, bin_size, pooled, grid, limit, T, low, high, w_low, w_high, valid)
    shape = (pooled, grid)
    return (low.reshape(shape), high.reshape(shape), w_low.reshape(shape),
            w_high.reshape(shape), valid.reshape(shape))  # fmt: skip


@parallel_njit
def all_axis_tables(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                    height, width, dtype_probe):  # fmt: skip
    """Every RoI's two axis tables (aligned=True), computed once for kernels whose tasks
    visit every RoI (the position-sensitive ops' per-bin tasks).

    Returns ``(grid, start, low, high, w_low, w_high, valid)``: ``grid[k] = (grid_h,
    grid_w)``; axis ``a`` (0 rows, 1 columns) of RoI k is ``[start[k, a], start[k + 1,
    a])`` of ``low[a]``, ... laid out as ``axis_samples``' ``[pooled, grid]`` tables.
    """
    T = dtype_probe.dtype.type
    K = rois.shape[0]
    grid = np.empty((K, 2), np.int64)
    for k in prange(K):
        geometry = roi_align_geometry(
            rois, k, spatial_scale, pooled_height, pooled_width, sampling_ratio, True
        )
        grid[k, 0], grid[k, 1] = geometry[4], geometry[5]
    start = np.zeros((K + 1, 2), np.int64)
    for k in range(K):
        start[k + 1, 0] = start[k, 0] + pooled_height * grid[k, 0]
        start[k + 1, 1] = start[k, 1] + pooled_width * grid[k, 1]
    size = max(start[K, 0], start[K, 1])
    low = np.empty((2, size), np.int64)
    high = np.empty((2, size), np.int64)
    w_low = np.empty((2, size), dtype_probe.dtype)
    w_high = np.empty((2, size), dtype_probe.dtype)
    valid = np.empty((2, size), np.bool_)
    for k in prange(K):
        start_h, start_w, bin_h, bin_w, grid_h, grid_w = roi_align_geometry(
            rois, k, spatial_scale, pooled_height, pooled_width, sampling_ratio, True
        )
        for a, (begin, bin_size, pooled, g, limit) in enumerate(
            ((start_h, bin_h, pooled_height, grid_h, height),
             (start_w, bin_w, pooled_width, grid_w, width))
        ):  # fmt: skip
            lo, hi = start[k, a], start[k + 1, a]
            fill_axis(begin, bin_size, pooled, g, limit, T, low[a, lo:hi], high[a, lo:hi],
                      w_low[a, lo:hi], w_high[a, lo:hi], valid[a, lo:hi])  # fmt: skip
    return grid, start, low, high, w_low, w_high, valid


@njit(cache=True)
def roi_sampling_tables(
    rois, k, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, height, width
):
    """``(grid_h, grid_w, rows, cols)``: RoI ``k``'s grid size and its two axis tables."""
    start_h, start_w, bin_h, bin_w, grid_h, grid_w = roi_align_geometry(
        rois, k, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
    )
    rows = axis_samples(start_h, bin_h, pooled_height, grid_h, height, rois)
    cols = axis_samples(start_w, bin_w, pooled_width, grid_w, width, rois)
    return grid_h, grid_w, rows, cols


@njit(cache=True)
def sample_is_inside(rows, cols, ph, iy, pw, ix):
    """False for a point more than one cell outside the map: it contributes zero."""
    return rows[4][ph, iy] and cols[4][pw, ix]


@njit(cache=True)
def sample_corners(rows, cols, ph, iy, pw, ix, n, height, width, channels):
    """``(w1, w2, w3, w4, o1, o2, o3, o4)`` of sampling point (iy, ix) of bin (ph, pw).

    w1..w4 are the bilinear weights of its (low, low), (low, high), (high, low),
    (high, high) neighbours (row, column), o1..o4 the flat offsets of those neighbours'
    channel 0 in an ``[N, H, W, C]`` array of image ``n``.
    """
    y_lo, y_hi, wy_lo, wy_hi, _ = rows
    x_lo, x_hi, wx_lo, wx_hi, _ = cols
    row_lo = (n * height + y_lo[ph, iy]) * width
    row_hi = (n * height + y_hi[ph, iy]) * width
    return (
        wy_lo[ph, iy] * wx_lo[pw, ix],
        wy_lo[ph, iy] * wx_hi[pw, ix],
        wy_hi[ph, iy] * wx_lo[pw, ix],
        wy_hi[ph, iy] * wx_hi[pw, ix],
        (row_lo + x_lo[pw, ix]) * channels,
        (row_lo + x_hi[pw, ix]) * channels,
        (row_hi + x_lo[pw, ix]) * channels,
        (row_hi + x_hi[pw, ix]) * channels,
    )


# ------------------------------------------------- a bin's own points (deformable, Bezier)
@njit(cache=True)
def axis_buffers(grid, dtype_probe):
    """Empty ``bin_axes`` tables for ``grid`` points: (low, high, w_low, w_high, inside,
    flat)."""
    return (np.zeros(grid, np.int64), np.zeros(grid, np.int64), np.zeros(grid, dtype_probe.dtype),
            np.zeros(grid, dtype_probe.dtype), np.zeros(grid, np.bool_),
            np.zeros(grid, np.bool_))  # fmt: skip


@njit(cache=True)
def bin_axes(start, bin_size, bin_index, grid, limit, table):
    """Fill ``table`` (``axis_buffers``) with one axis of a bin's sampling points (``grid``
    of them, from the shifted ``start``): the two cells around each and their weights
    (``bilinear_axis``; w_high is the point's fraction of its cell), whether the point is
    within a cell of the map, and whether the value is flat along the axis there (clamped
    to the map's start or end)."""
    low, high, w_low, w_high, inside, flat = table
    T = w_low.dtype.type
    for i in range(grid):
        v = (start + T(bin_index) * bin_size) + T(i + 0.5) * bin_size / T(grid)
        inside[i] = v >= -1.0 and v <= limit
        low[i], high[i], w_low[i], w_high[i] = bilinear_axis(v, limit, T)
        flat[i] = v <= 0 or low[i] == high[i]


@njit(cache=True)
def point_corners(rows, cols, iy, ix, n, H, W, C):
    """(w1, w2, w3, w4, o1, o2, o3, o4): the bilinear weights of point (iy, ix) of a
    bin placed by ``bin_axes`` and the flat ``[N, H, W, C]`` offsets (channel 0) of its
    four neighbours, (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)."""
    y_lo, y_hi, hy, ly = rows[0], rows[1], rows[2], rows[3]
    x_lo, x_hi, hx, lx = cols[0], cols[1], cols[2], cols[3]
    row_lo = (n * H + y_lo[iy]) * W
    row_hi = (n * H + y_hi[iy]) * W
    return (hy[iy] * hx[ix], hy[iy] * lx[ix], ly[iy] * hx[ix], ly[iy] * lx[ix],
            np.uint64((row_lo + x_lo[ix]) * C), np.uint64((row_lo + x_hi[ix]) * C),
            np.uint64((row_hi + x_lo[ix]) * C), np.uint64((row_hi + x_hi[ix]) * C))  # fmt: skip


@njit(cache=True)
def bin_sum(Xf, rows, cols, gh, gw, n, H, W, acc):
    """``acc[C]`` = the sum of a bin's points' bilinear values (its points placed in
    ``rows`` and ``cols`` by ``bin_axes``; those more than a cell outside the map count
    0), points in order, from image n of the flat ``[N, H, W, C]`` map ``Xf``."""
    C = acc.shape[0]
    acc[:] = 0
    y_in, x_in = rows[4], cols[4]
    for iy in range(gh):
        for ix in range(gw):
            if not (y_in[iy] and x_in[ix]):
                continue
            w1, w2, w3, w4, o1, o2, o3, o4 = point_corners(rows, cols, iy, ix, n, H, W, C)
            for c in range(C):
                u = np.uint64(c)
                acc[c] += w1 * Xf[o1 + u] + w2 * Xf[o2 + u] + w3 * Xf[o3 + u] + w4 * Xf[o4 + u]
