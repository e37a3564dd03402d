"""Rotated RoIAlign on CPU: Numba kernels, forward and deterministic backward.

Channels-last input (``X[N, H, W, C]``) as ``roiops.cpu.roi_align``: a sampling point's
four neighbours are four contiguous channel vectors. Rotation couples a point's row and
column, so instead of RoIAlign's per-axis tables each RoI's points are resolved once
(``rotated_points``: the neighbours' offsets and weights of every point of every bin),
following ``roiops.reference.roi_align_rotated``'s arithmetic.

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
from roiops.cpu.sampling import bilinear_axis


@njit(cache=True)
def rotated_points(rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
                   degrees, clockwise, height, width, channels):  # fmt: skip
    """``(count, points, offsets, weights)`` of RoI k: ``points[p]`` sampling points of
    bin p fall inside the map (one cell of slack); ``offsets[p, i, :]`` are the flat
    ``[N, H, W, C]`` offsets of point i's four neighbours (channel 0), ``weights[p, i, :]``
    their bilinear weights; ``count`` is the bin's number of points, inside or not."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    offset = T(0.5) if aligned else T(0.0)
    n = int(rois[k, 0])
    center_w = rois[k, 1] * scale - offset
    center_h = rois[k, 2] * scale - offset
    roi_w = rois[k, 3] * scale
    roi_h = rois[k, 4] * scale
    if not aligned:
        roi_w = max(roi_w, T(1.0))
        roi_h = max(roi_h, T(1.0))
    theta = float(rois[k, 5]) * math.pi / 180.0 if degrees else float(rois[k, 5])
    theta = T(-theta if clockwise else theta)
    cos_t = T(math.cos(float(theta)))
    sin_t = T(math.sin(float(theta)))
    bin_h = roi_h / T(pooled_h)
    bin_w = roi_w / T(pooled_w)
    if sampling_ratio > 0:
        gh = sampling_ratio
        gw = sampling_ratio
    else:
        gh = max(math.ceil(roi_h / T(pooled_h)), 0)
        gw = max(math.ceil(roi_w / T(pooled_w)), 0)
    start_h = -roi_h / T(2)
    start_w = -roi_w / T(2)
    P = pooled_h * pooled_w
    points = np.zeros(P, np.int64)
    offsets = np.zeros((P, max(gh * gw, 1), 4), np.int64)
    weights = np.zeros((P, max(gh * gw, 1), 4), rois.dtype)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            p = ph * pooled_w + pw
            for iy in range(gh):
                yy = (start_h + T(ph) * bin_h) + T(iy + 0.5) * bin_h / T(gh)
                for ix in range(gw):
                    xx = (start_w + T(pw) * bin_w) + T(ix + 0.5) * bin_w / T(gw)
                    y = yy * cos_t - xx * sin_t + center_h
                    x = yy * sin_t + xx * cos_t + center_w
                    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
                        continue
                    y_lo, y_hi, hy, ly = bilinear_axis(y, height, T)
                    x_lo, x_hi, hx, lx = bilinear_axis(x, width, T)
                    i = points[p]
                    row_lo = (n * height + y_lo) * width
                    row_hi = (n * height + y_hi) * width
                    offsets[p, i, 0] = (row_lo + x_lo) * channels
                    offsets[p, i, 1] = (row_lo + x_hi) * channels
                    offsets[p, i, 2] = (row_hi + x_lo) * channels
                    offsets[p, i, 3] = (row_hi + x_hi) * channels
                    weights[p, i, 0] = hy * hx
                    weights[p, i, 1] = hy * lx
                    weights[p, i, 2] = ly * hx
                    weights[p, i, 3] = ly * lx
                    points[p] = i + 1
    return T(max(gh * gw, 1)), points, offsets, weights


@parallel_njit
def roi_align_rotated_forward(X, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                              aligned, degrees, clockwise, out):  # fmt: skip
    """out[K, C, pooled_h, pooled_w] = the mean of each bin's rotated sampling points."""
    K, C = out.shape[0], out.shape[1]
    out_bins = out.reshape(K, C, pooled_h * pooled_w)
    for k in prange(K):
        roi_align_rotated_forward_roi(
            X, rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, degrees,
            clockwise, out_bins[k],
        )  # fmt: skip


@njit(cache=True)
def roi_align_rotated_forward_roi(X, rois, k, spatial_scale, pooled_h, pooled_w,
                                  sampling_ratio, aligned, degrees, clockwise,
                                  out_k):  # fmt: skip
    """One RoI's output ``out_k[C, pooled_h * pooled_w]`` (the forward task's work)."""
    _, H, W, C = X.shape
    Xf = X.reshape(-1)
    count, points, offsets, weights = rotated_points(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, degrees,
        clockwise, H, W, C,
    )  # fmt: skip
    mean = np.zeros(C, X.dtype)
    for p in range(pooled_h * pooled_w):
        rotated_bin_mean(Xf, count, points, offsets, weights, p, mean)
        for c in range(C):
            out_k[c, p] = mean[c]


@njit(cache=True)
def rotated_bin_mean(Xf, count, points, offsets, weights, p, mean):
    """``mean[C]`` = the mean over bin p's sampling points (``rotated_points``' tables, of
    ``count`` points) of the flat ``[N, H, W, C]`` map ``Xf``, channel by channel."""
    C = mean.shape[0]
    mean[:] = 0
    for i in range(points[p]):
        o1, o2 = np.uint64(offsets[p, i, 0]), np.uint64(offsets[p, i, 1])
        o3, o4 = np.uint64(offsets[p, i, 2]), np.uint64(offsets[p, i, 3])
        w1, w2, w3, w4 = weights[p, i, 0], weights[p, i, 1], weights[p, i, 2], weights[p, i, 3]
        for c in range(C):
            u = np.uint64(c)
            mean[c] += w1 * Xf[o1 + u] + w2 * Xf[o2 + u] + w3 * Xf[o3 + u] + w4 * Xf[o4 + u]
    for c in range(C):
        mean[c] = mean[c] / count


@parallel_njit
def roi_align_rotated_backward(G, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                               sampling_ratio, aligned, degrees, clockwise, channel_block,
                               GX):  # fmt: skip
    """GX[N, H, W, C] (zeroed) += the gradient of G[K, C, pooled_h, pooled_w]."""
    N, C = GX.shape[0], GX.shape[3]
    G_bins = G.reshape(G.shape[0], C, pooled_h * pooled_w)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            roi_align_rotated_backward_roi(
                G_bins[k], rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                aligned, degrees, clockwise, c0, c1, GX,
            )  # fmt: skip


@njit(cache=True)
def roi_align_rotated_backward_roi(G_k, rois, k, spatial_scale, pooled_h, pooled_w,
                                   sampling_ratio, aligned, degrees, clockwise, c0, c1,
                                   GX):  # fmt: skip
    """GX[n, :, :, c0:c1] += RoI k's gradient from ``G_k[C, pooled_h * pooled_w]`` (one
    RoI's share of a backward task)."""
    _, H, W, C = GX.shape
    T = GX.dtype.type
    GXf = GX.reshape(-1)
    count, points, offsets, weights = rotated_points(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, degrees,
        clockwise, H, W, C,
    )  # fmt: skip
    # (g * w) / count as the reference; times 1 / count where that is exact
    inverse = T(1) / count
    exact = (int(count) & (int(count) - 1)) == 0
    for p in range(pooled_h * pooled_w):
        for i in range(points[p]):
            for corner in range(4):
                w = weights[p, i, corner]
                o = np.uint64(offsets[p, i, corner])
                for c in range(c0, c1):
                    v = G_k[c, p] * w
                    v = v * inverse if exact else v / count
                    GXf[o + np.uint64(c)] += v
