"""BezierAlign on CPU: Numba kernels, forward and deterministic backward.

Channels-last input (``X[N, H, W, C]``) as ``roiops.cpu.roi_align``. Each bin is centred
on its own point between the RoI's two Bézier curves, so each bin places its own points
(``bin_centre``, then ``roiops.cpu.sampling.bin_axes``), in
``roiops.reference.bezier_align``'s arithmetic (mmcv's C++ types), which the tests check
bit for bit.

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
from roiops.cpu.sampling import axis_buffers, bin_axes, bin_sum, point_corners

# columns of p0..p7 (x; y follows) in a row of rois: the bottom curve is listed reversed
CONTROL_COLUMNS = np.array([1, 3, 5, 7, 15, 13, 11, 9])


@njit(cache=True)
def bezier_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """(points[2, 8], bin_h, bin_w, grid_h, grid_w, offset) of Bézier RoI k: its control
    points in feature cells (x row, y row), its bins and sampling grid."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    points = np.empty((2, 8), rois.dtype)
    for i in range(8):
        points[0, i] = rois[k, CONTROL_COLUMNS[i]] * scale
        points[1, i] = rois[k, CONTROL_COLUMNS[i] + 1] * scale
    width = max(abs(points[0, 0] - points[0, 3]), abs(points[0, 4] - points[0, 7]))
    height = max(abs(points[1, 0] - points[1, 3]), abs(points[1, 4] - points[1, 7]))
    if not aligned:
        width = max(width, T(1))
        height = max(height, T(1))
    bin_h = height / T(pooled_h)
    bin_w = width / T(pooled_w)
    if sampling_ratio > 0:
        gh = sampling_ratio
        gw = sampling_ratio
    else:
        gh = int(math.ceil(height / T(pooled_h)))
        gw = int(math.ceil(width / T(pooled_w)))
    offset = T(0.5) if aligned else T(0)
    return points, bin_h, bin_w, gh, gw, offset


@njit(cache=True)
def bezier_curve(p, u, T):
    """The cubic Bézier of control values ``p[4]`` at u, in mmcv's C++ types (see
    ``roiops.reference.bezier_align.bezier_curve``)."""
    a = 1.0 - np.float64(u)
    s = (a * a * a * np.float64(p[0]) + 3.0 * np.float64(u) * a * a * np.float64(p[1])
         + 3.0 * np.float64(u) * np.float64(u) * a * np.float64(p[2]))  # fmt: skip
    return T(s + np.float64(u * u * u * p[3]))


@njit(cache=True)
def centre_along(points, axis, u, v, offset, T):
    """One coordinate (``axis`` 0: x, 1: y) of the point between the curves at u and v:
    ``bottom * v + top * (1. - v) - offset``, the first product in ``T``, the rest in
    float64 (mmcv's C++ types)."""
    top = bezier_curve(points[axis, 0:4], u, T)
    bottom = bezier_curve(points[axis, 4:8], u, T)
    return T(np.float64(bottom * v) + np.float64(top) * (1.0 - np.float64(v)) - np.float64(offset))


@njit(cache=True)
def place_bezier_bin(points, bin_h, bin_w, gh, gw, offset, ph, pw, pooled_h, pooled_w, H, W,
                     rows, cols):  # fmt: skip
    """Fill ``rows`` and ``cols`` (``axis_buffers``) with bin (ph, pw)'s points: a bin-sized
    box centred between the curves at ``u = pw / PW``, ``v = ph / PH``."""
    T = points.dtype.type
    u = T(pw) / T(pooled_w)
    v = T(ph) / T(pooled_h)
    # (``centre - 0.5 * bin + (i + 0.5) * bin / grid``: bin_axes' start with bin index 0)
    bin_axes(centre_along(points, 1, u, v, offset, T) - T(0.5) * bin_h, bin_h, 0, gh, H, rows)
    bin_axes(centre_along(points, 0, u, v, offset, T) - T(0.5) * bin_w, bin_w, 0, gw, W, cols)


@parallel_njit
def bezier_align_forward(X, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
                         out):  # fmt: skip
    """out[K, C, pooled_h, pooled_w] = the mean of each bin's sampling points."""
    K, C = out.shape[0], out.shape[1]
    out_bins = out.reshape(K, C, pooled_h * pooled_w)
    for k in prange(K):
        bezier_align_forward_roi(X, rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                                 aligned, out_bins[k])  # fmt: skip


@njit(cache=True)
def bezier_align_forward_roi(X, rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                             aligned, out_k):  # fmt: skip
    """One RoI's output ``out_k[C, pooled_h * pooled_w]`` (the forward task's work)."""
    _, H, W, C = X.shape
    T = X.dtype.type
    Xf = X.reshape(-1)
    n = int(rois[k, 0])
    points, bin_h, bin_w, gh, gw, offset = bezier_geometry(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
    )
    count = T(max(gh * gw, 1))
    rows, cols = axis_buffers(gh, X), axis_buffers(gw, X)
    acc = np.zeros(C, X.dtype)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            place_bezier_bin(points, bin_h, bin_w, gh, gw, offset, ph, pw, pooled_h, pooled_w,
                             H, W, rows, cols)  # fmt: skip
            bin_sum(Xf, rows, cols, gh, gw, n, H, W, acc)
            for c in range(C):
                out_k[c, ph * pooled_w + pw] = acc[c] / count


@parallel_njit
def bezier_align_backward(G, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                          sampling_ratio, aligned, channel_block, GX):  # fmt: skip
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
            bezier_align_backward_roi(G_bins[k], rois, k, spatial_scale, pooled_h, pooled_w,
                                      sampling_ratio, aligned, c0, grad, GX)  # fmt: skip


@njit(cache=True)
def bezier_align_backward_roi(G_k, rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                              aligned, c0, grad, GX):  # fmt: skip
    """GX[n, :, :, c0:c0 + nc] += RoI k's gradient from ``G_k[C, pooled_h * pooled_w]``:
    ``g * w / count`` (mmcv's order) per neighbour, per cell in the reference's order:
    bins, points, corners (``grad[P, nc]`` is the task's scratch)."""
    _, H, W, C = GX.shape
    T = GX.dtype.type
    nc = grad.shape[1]
    GXf = GX.reshape(-1)
    n = int(rois[k, 0])
    points, bin_h, bin_w, gh, gw, offset = bezier_geometry(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
    )
    count = T(gh * gw)
    bins_first(G_k, c0, T(1), grad)  # (the task's gradients bins first; / 1 changes no bit)
    rows, cols = axis_buffers(gh, GX), axis_buffers(gw, GX)
    y_in, x_in = rows[4], cols[4]
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            g = grad[ph * pooled_w + pw]
            place_bezier_bin(points, bin_h, bin_w, gh, gw, offset, ph, pw, pooled_h, pooled_w,
                             H, W, rows, cols)  # fmt: skip
            for iy in range(gh):
                for ix in range(gw):
                    if not (y_in[iy] and x_in[ix]):
                        continue
                    w1, w2, w3, w4, o1, o2, o3, o4 = point_corners(rows, cols, iy, ix, n, H, W, C)
                    # four separate passes: corners coincide at the border, and each
                    # must add in the reference's order
                    o = o1 + np.uint64(c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w1 / count
                    o = o2 + np.uint64(c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w2 / count
                    o = o3 + np.uint64(c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w3 / count
                    o = o4 + np.uint64(c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w4 / count
