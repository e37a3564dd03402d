"""Point sampling in RoIs (PointRend) on CPU: Numba kernels, forward and deterministic
backward.

Channels-last input (``X[N, H, W, C]``) as ``roiops.cpu.roi_align``: a point's corners
are runs of channels. Each point adds its corners in the map, in
``roiops.reference.roi_point_sample``'s arithmetic and order, which the tests check bit
for bit.

* forward: one task per RoI.
* backward: one task per (image, channel block), visiting the image's RoIs in input
  order: every gradient cell is summed by one thread in one fixed order (the
  reference's), bitwise reproducible for any number of threads.

(For an NCHW map, the forward's transpose to channels-last is most of its time: with four
reads an output, 55 ms of transpose against 20 ms of sampling for 256 RoIs of 14 x 14
points from 2 x 256 x 200 x 336 on this project's VM. A kernel sampling the NCHW planes
directly took 58 ms, as long as both once its output was allocated; it was left out.)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.parallel import parallel_njit
from roiops.cpu.roi_align import bins_first


@njit(cache=True)
def axis_corners(v, limit):
    """(low, low_in, high_in): the cells ``low = floor(v)`` and ``low + 1`` around ``v``
    along an axis of ``limit`` cells and whether each is in the map (their weights are
    ``1 - f`` and ``f``, ``f = v - low``); neither where v is not strictly within a cell of
    the map (NaN included: v is then never converted to a cell)."""
    if not (v > -1.0 and v < limit):
        return 0, False, False
    low = math.floor(v)
    return low, low >= 0, low + 1 < limit


@njit(cache=True)
def point_corners(rois, points, k, p, spatial_scale, aligned, n, H, W, C, offsets, weights):
    """The number m of point p of RoI k's corners in the map; ``offsets[:m]`` their flat
    ``[N, H, W, C]`` offsets (channel 0) in image n, ``weights[:m]`` their weights (row
    weight times column weight), in grid_sample's order."""
    T = weights.dtype.type
    scale = T(spatial_scale)
    x1, y1, x2, y2 = T(rois[k, 1]), T(rois[k, 2]), T(rois[k, 3]), T(rois[k, 4])
    # (points[1, P, 2]: every RoI's; k may come as prange's unsigned index)
    pk = np.int64(k) if points.shape[0] > 1 else np.int64(0)
    x = x1 + T(points[pk, p, 0]) * (x2 - x1)
    y = y1 + T(points[pk, p, 1]) * (y2 - y1)
    if aligned:
        x = x * scale - T(0.5)
        y = y * scale - T(0.5)
    else:
        x = x * scale * T(W - 1) / T(W)
        y = y * scale * T(H - 1) / T(H)
    y_lo, y_lo_in, y_hi_in = axis_corners(y, H)
    x_lo, x_lo_in, x_hi_in = axis_corners(x, W)
    fy = y - T(y_lo)
    fx = x - T(x_lo)
    m = 0
    for row, row_in, wy in ((y_lo, y_lo_in, T(1) - fy), (y_lo + 1, y_hi_in, fy)):
        if not row_in:
            continue
        for col, col_in, wx in ((x_lo, x_lo_in, T(1) - fx), (x_lo + 1, x_hi_in, fx)):
            if col_in:
                offsets[m] = np.uint64(((n * H + row) * W + col) * C)
                weights[m] = wy * wx
                m += 1
    return m


@parallel_njit
def roi_point_sample_forward(X, rois, points, spatial_scale, aligned, out):
    """out[K, C, P] = each point's bilinear sample (zero padding)."""
    for k in prange(out.shape[0]):  # (K: the RoIs, which points may not count)
        roi_point_sample_forward_roi(X, rois, points, k, spatial_scale, aligned, out[k])


@njit(cache=True)
def roi_point_sample_forward_roi(X, rois, points, k, spatial_scale, aligned, out_k):
    """One RoI's output ``out_k[C, P]`` (the forward task's work)."""
    _, H, W, C = X.shape
    Xf = X.reshape(-1)
    n = int(rois[k, 0])
    offsets = np.empty(4, np.uint64)
    weights = np.empty(4, X.dtype)
    acc = np.empty(C, X.dtype)
    for p in range(points.shape[1]):
        m = point_corners(rois, points, k, p, spatial_scale, aligned, n, H, W, C, offsets,
                          weights)  # fmt: skip
        acc[:] = 0
        for j in range(m):
            o, w = offsets[j], weights[j]
            for c in range(C):
                acc[c] += w * Xf[o + np.uint64(c)]
        for c in range(C):
            out_k[c, p] = acc[c]


@parallel_njit
def roi_point_sample_backward(G, rois, points, order, image_start, spatial_scale, aligned,
                             channel_block, GX):  # fmt: skip
    """GX[N, H, W, C] (zeroed) += the gradient of G[K, C, P]."""
    N, C = GX.shape[0], GX.shape[3]
    P = points.shape[1]
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        grad = np.empty((P, c1 - c0), GX.dtype)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            roi_point_sample_backward_roi(G[k], rois, points, k, spatial_scale, aligned, c0,
                                          grad, GX)  # fmt: skip


@njit(cache=True)
def roi_point_sample_backward_roi(G_k, rois, points, k, spatial_scale, aligned, c0, grad, GX):
    """GX[n, :, :, c0:c0 + nc] += RoI k's gradient from ``G_k[C, P]``: ``g * weight`` to
    each corner of each point, in the reference's order (``grad[P, nc]`` is the task's
    scratch)."""
    _, H, W, C = GX.shape
    T = GX.dtype.type
    nc = grad.shape[1]
    GXf = GX.reshape(-1)
    n = int(rois[k, 0])
    bins_first(G_k, c0, T(1), grad)  # (the task's gradients points first; / 1 changes no bit)
    offsets = np.empty(4, np.uint64)
    weights = np.empty(4, GX.dtype)
    for p in range(points.shape[1]):
        g = grad[p]
        m = point_corners(rois, points, k, p, spatial_scale, aligned, n, H, W, C, offsets,
                          weights)  # fmt: skip
        for j in range(m):
            o, w = offsets[j] + np.uint64(c0), weights[j]
            for cc in range(nc):
                GXf[o + np.uint64(cc)] += g[cc] * w
