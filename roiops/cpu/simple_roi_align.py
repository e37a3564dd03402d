"""SimpleRoIAlign (PointRend) on CPU: Numba kernels, forward and deterministic backward.

Channels-last input (``X[N, H, W, C]``) as ``roiops.cpu.roi_align``. Each bin samples one
point, whose row depends on ph only and whose column on pw only: each RoI gets two small
axis tables (the point's two cells along the axis, their weights, and whether each is in
the map), and each bin adds its corners in the map, in
``roiops.reference.simple_roi_align``'s arithmetic and order, which the tests check bit
for bit.

* forward: one task per RoI.
* backward: one task per (image, channel block), visiting the image's RoIs in input
  order: every gradient cell is summed by one thread in one fixed order (the
  reference's), bitwise reproducible for any number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.parallel import parallel_njit
from roiops.cpu.roi_align import bins_first


@njit(cache=True)
def point_axis(v, limit, at, cells, weights, inside):
    """Entry ``at`` of an axis table for the point at ``v``: ``cells[at]`` = (floor(v),
    floor(v) + 1), ``weights[at]`` = (1 - f, f) with ``f = v - floor(v)``, ``inside[at]``
    whether each cell is in ``[0, limit)`` (neither where v is not strictly within a cell
    of the map, NaN included: v is then never converted to a cell)."""
    T = weights.dtype.type
    if not (v > -1.0 and v < limit):
        cells[at, 0], cells[at, 1] = 0, 0
        weights[at, 0], weights[at, 1] = T(0), T(0)
        inside[at, 0], inside[at, 1] = False, False
        return
    low = math.floor(v)
    f = v - T(low)
    cells[at, 0], cells[at, 1] = low, low + 1
    weights[at, 0], weights[at, 1] = T(1) - f, f
    inside[at, 0], inside[at, 1] = low >= 0, low + 1 < limit


@njit(cache=True)
def axis_table(lo, hi, pooled, limit, spatial_scale, aligned, dtype_probe):
    """``(cells[P, 2], weights[P, 2], inside[P, 2])``: the points of ``pooled`` bins
    between the box edges ``lo`` and ``hi`` (image coordinates) along an axis of
    ``limit`` cells."""
    T = dtype_probe.dtype.type
    scale = T(spatial_scale)
    cells = np.empty((pooled, 2), np.int64)
    weights = np.empty((pooled, 2), dtype_probe.dtype)
    inside = np.empty((pooled, 2), np.bool_)
    for p in range(pooled):
        v = lo + T(p + 0.5) / T(pooled) * (hi - lo)
        if aligned:
            v = v * scale - T(0.5)
        else:
            v = v * scale * T(limit - 1) / T(limit)
        point_axis(v, limit, p, cells, weights, inside)
    return cells, weights, inside


@njit(cache=True)
def roi_axes(rois, k, spatial_scale, pooled_h, pooled_w, aligned, H, W, dtype_probe):
    """``(rows, cols)``: RoI k's axis tables (``axis_table``)."""
    T = dtype_probe.dtype.type
    rows = axis_table(T(rois[k, 2]), T(rois[k, 4]), pooled_h, H, spatial_scale, aligned,
                      dtype_probe)  # fmt: skip
    cols = axis_table(T(rois[k, 1]), T(rois[k, 3]), pooled_w, W, spatial_scale, aligned,
                      dtype_probe)  # fmt: skip
    return rows, cols


@njit(cache=True)
def bin_corners(rows, cols, ph, pw, n, H, W, C, offsets, weights):
    """The number m of bin (ph, pw)'s corners in the map; ``offsets[:m]`` their flat
    ``[N, H, W, C]`` offsets (channel 0) in image n, ``weights[:m]`` their weights (row
    weight times column weight), in grid_sample's order."""
    m = 0
    for i in range(2):
        if not rows[2][ph, i]:
            continue
        row = (n * H + rows[0][ph, i]) * W
        for j in range(2):
            if cols[2][pw, j]:
                offsets[m] = np.uint64((row + cols[0][pw, j]) * C)
                weights[m] = rows[1][ph, i] * cols[1][pw, j]
                m += 1
    return m


@parallel_njit
def simple_roi_align_forward(X, rois, spatial_scale, pooled_h, pooled_w, aligned, out):
    """out[K, C, pooled_h, pooled_w] = each bin's bilinear sample at its centre."""
    K, C = out.shape[0], out.shape[1]
    out_bins = out.reshape(K, C, pooled_h * pooled_w)
    for k in prange(K):
        simple_roi_align_forward_roi(X, rois, k, spatial_scale, pooled_h, pooled_w, aligned,
                                     out_bins[k])  # fmt: skip


@njit(cache=True)
def simple_roi_align_forward_roi(X, rois, k, spatial_scale, pooled_h, pooled_w, aligned,
                                 out_k):  # fmt: skip
    """One RoI's output ``out_k[C, pooled_h * pooled_w]`` (the forward task's work)."""
    _, H, W, C = X.shape
    Xf = X.reshape(-1)
    n = int(rois[k, 0])
    rows, cols = roi_axes(rois, k, spatial_scale, pooled_h, pooled_w, aligned, H, W, X)
    offsets = np.empty(4, np.uint64)
    weights = np.empty(4, X.dtype)
    acc = np.empty(C, X.dtype)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            m = bin_corners(rows, cols, ph, pw, n, H, W, C, offsets, weights)
            acc[:] = 0
            for j in range(m):
                o, w = offsets[j], weights[j]
                for c in range(C):
                    acc[c] += w * Xf[o + np.uint64(c)]
            for c in range(C):
                out_k[c, ph * pooled_w + pw] = acc[c]


@parallel_njit
def simple_roi_align_backward(G, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                              aligned, channel_block, GX):  # fmt: skip
    """GX[N, H, W, C] (zeroed) += the gradient of G[K, C, pooled_h, pooled_w]."""
    N, C = GX.shape[0], GX.shape[3]
    P = pooled_h * pooled_w
    G_bins = G.reshape(G.shape[0], C, P)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        grad = np.empty((P, c1 - c0), GX.dtype)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            simple_roi_align_backward_roi(G_bins[k], rois, k, spatial_scale, pooled_h,
                                          pooled_w, aligned, c0, grad, GX)  # fmt: skip


@njit(cache=True)
def simple_roi_align_backward_roi(G_k, rois, k, spatial_scale, pooled_h, pooled_w, aligned, c0,
                                  grad, GX):  # fmt: skip
    """GX[n, :, :, c0:c0 + nc] += RoI k's gradient from ``G_k[C, pooled_h * pooled_w]``:
    ``g * weight`` to each corner of each bin, in the reference's order (``grad[P, nc]``
    is the task's scratch)."""
    _, H, W, C = GX.shape
    T = GX.dtype.type
    nc = grad.shape[1]
    GXf = GX.reshape(-1)
    n = int(rois[k, 0])
    bins_first(G_k, c0, T(1), grad)  # (the task's gradients bins first; / 1 changes no bit)
    rows, cols = roi_axes(rois, k, spatial_scale, pooled_h, pooled_w, aligned, H, W, GX)
    offsets = np.empty(4, np.uint64)
    weights = np.empty(4, GX.dtype)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            g = grad[ph * pooled_w + pw]
            m = bin_corners(rows, cols, ph, pw, n, H, W, C, offsets, weights)
            for j in range(m):
                o, w = offsets[j] + np.uint64(c0), weights[j]
                for cc in range(nc):
                    GXf[o + np.uint64(cc)] += g[cc] * w
