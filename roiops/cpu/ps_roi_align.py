"""Position-sensitive RoIAlign on CPU: Numba kernels, forward and deterministic backward.

Bin (ph, pw) of output channel c_out reads input channel ``(c_out * PH + ph) * PW + pw``
(``roiops.reference.ps_roi_align``), so each output reads one plane: the kernels read
the input as it is laid out in NCHW and share RoIAlign's sampling tables
(``roiops.cpu.sampling``, aligned=True). A bin's sampling points are the same for every
output channel, so each RoI's points are resolved once (``bin_points``: the four
neighbours' in-plane offsets and weights of every point of every bin) and the channel
loops only load and multiply.

* forward: one task per RoI.
* backward: one task per (image, block of input channels). Input channel c_in receives
  gradient from exactly one output per RoI (its c_out and bin), so the task visits the
  image's RoIs in input order and is the only writer of its channels: every gradient
  cell is summed by one thread in one fixed order, bitwise reproducible for any number
  of threads, and in the reference's order (so equal to it bit for bit).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.sampling import roi_sampling_tables


@njit(cache=True)
def bin_points(rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, height, width, T):
    """``(count, points, offsets, weights)`` of RoI k: ``points[p]`` sampling points of
    bin p lie inside the map (one cell of slack), ``offsets[p, i, :]`` are the in-plane
    offsets of point i's four neighbours and ``weights[p, i, :]`` their bilinear weights;
    ``count`` is the bin's number of points, inside or not (the mean's divisor)."""
    gh, gw, rows, cols = roi_sampling_tables(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, True, height, width
    )
    y_lo, y_hi, wy_lo, wy_hi, y_in = rows
    x_lo, x_hi, wx_lo, wx_hi, x_in = cols
    P = pooled_h * pooled_w
    points = np.zeros(P, np.int64)
    offsets = np.zeros((P, max(gh * gw, 1), 4), np.int64)
    weights = np.zeros((P, max(gh * gw, 1), 4), T)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            p = ph * pooled_w + pw
            for iy in range(gh):
                for ix in range(gw):
                    if not (y_in[ph, iy] and x_in[pw, ix]):
                        continue
                    i = points[p]
                    offsets[p, i, 0] = y_lo[ph, iy] * width + x_lo[pw, ix]
                    offsets[p, i, 1] = y_lo[ph, iy] * width + x_hi[pw, ix]
                    offsets[p, i, 2] = y_hi[ph, iy] * width + x_lo[pw, ix]
                    offsets[p, i, 3] = y_hi[ph, iy] * width + x_hi[pw, ix]
                    weights[p, i, 0] = wy_lo[ph, iy] * wx_lo[pw, ix]
                    weights[p, i, 1] = wy_lo[ph, iy] * wx_hi[pw, ix]
                    weights[p, i, 2] = wy_hi[ph, iy] * wx_lo[pw, ix]
                    weights[p, i, 3] = wy_hi[ph, iy] * wx_hi[pw, ix]
                    points[p] = i + 1
    return T(max(gh * gw, 1)), points, offsets, weights


@njit(parallel=True, cache=True)
def ps_roi_align_forward(X, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, out):
    """out[K, C_out, pooled_h, pooled_w] from X[N, C, H, W] (C = C_out * pooled_h * pooled_w)."""
    _, C, H, W = X.shape
    K, C_out = out.shape[0], out.shape[1]
    P = pooled_h * pooled_w
    T = X.dtype.type
    Xf = X.reshape(-1)
    out_bins = out.reshape(K, C_out, P)
    for k in prange(K):
        n = int(rois[k, 0])
        count, points, offsets, weights = bin_points(
            rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, H, W, T
        )
        for p in range(P):
            o = offsets[p]
            w = weights[p]
            for c_out in range(C_out):
                plane = np.uint64((n * C + c_out * P + p) * H * W)
                acc = T(0)
                for i in range(points[p]):
                    acc += (
                        w[i, 0] * Xf[plane + np.uint64(o[i, 0])]
                        + w[i, 1] * Xf[plane + np.uint64(o[i, 1])]
                        + w[i, 2] * Xf[plane + np.uint64(o[i, 2])]
                        + w[i, 3] * Xf[plane + np.uint64(o[i, 3])]
                    )
                out_bins[k, c_out, p] = acc / count


@njit(parallel=True, cache=True)
def ps_roi_align_backward(
    G, rois, order, image_start, spatial_scale, pooled_h, pooled_w, sampling_ratio,
    channel_block, GX,
):  # fmt: skip
    """GX[N, C, H, W] (NCHW, uninitialised: each task zeroes its own planes first, so
    the pages are touched in parallel) = the gradient of G[K, C_out, pooled_h, pooled_w].

    ``order[image_start[n]:image_start[n + 1]]`` lists image n's RoIs in input order.
    """
    N, C, H, W = GX.shape
    T = GX.dtype.type
    P = pooled_h * pooled_w
    G_bins = G.reshape(G.shape[0], G.shape[1], P)
    GXf = GX.reshape(-1)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        GXf[(n * C + c0) * H * W : (n * C + c1) * H * W] = 0
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            count, points, offsets, weights = bin_points(
                rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, H, W, T
            )
            # (g * w) / count, as torchvision and the reference; where count is a power
            # of two (sampling_ratio 2: 4 points), times 1 / count gives the same bits
            # (both round the same real number) without a division per cell
            inverse = T(1) / count
            exact = (int(count) & (int(count) - 1)) == 0
            # bin by bin, its channels in [c0, c1) P apart: no division per channel
            for p in range(P):
                for c_out in range((c0 - p + P - 1) // P, (c1 - p + P - 1) // P):
                    g = G_bins[k, c_out, p]
                    plane = np.uint64((n * C + c_out * P + p) * H * W)
                    for i in range(points[p]):
                        for corner in range(4):
                            v = g * weights[p, i, corner]
                            v = v * inverse if exact else v / count
                            GXf[plane + np.uint64(offsets[p, i, corner])] += v
