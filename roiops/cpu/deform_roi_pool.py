"""Deformable RoI pooling on CPU: Numba kernels, forward and deterministic backward.

Channels-last input (``X[N, H, W, C]``) as ``roiops.cpu.roi_align``: a sampling point's
four neighbours are four contiguous channel vectors. Each bin has its own offset, so a
point's row depends on the bin's column too: instead of RoIAlign's per-RoI axis tables,
each bin resolves its points' rows and columns (``bin_axes``), in
``roiops.reference.deform_roi_pool``'s arithmetic, which the tests check bit for bit.

* forward and offset gradient: one task per RoI.
* input gradient: one task per (image, channel block), visiting the image's RoIs in
  input order: every gradient cell is summed by one thread in one fixed order (the
  reference's), bitwise reproducible for any number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.parallel import parallel_njit
from roiops.cpu.roi_align import bins_first
from roiops.cpu.sampling import (
    axis_buffers,
    bin_axes,
    bin_sum,
    point_corners,
    roi_align_geometry,
)


@njit(cache=True)
def deform_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio):
    """(n, (start_h, start_w, bin_h, bin_w, grid_h, grid_w, height, width), count) of RoI
    k: its image, its aligned RoIAlign geometry with its size in feature cells (the unit
    of its bins' offsets), and its bins' point count."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    start_h, start_w, bin_h, bin_w, gh, gw = roi_align_geometry(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, True
    )
    # (the aligned geometry's ``(x2 * s - 0.5) - (x1 * s - 0.5)``)
    height = (rois[k, 4] * scale - T(0.5)) - start_h
    width = (rois[k, 3] * scale - T(0.5)) - start_w
    g = (start_h, start_w, bin_h, bin_w, gh, gw, height, width)
    return int(rois[k, 0]), g, T(max(gh * gw, 1))


@njit(cache=True)
def place_bin(offset, k, ph, pw, g, gamma, H, W, rows, cols):
    """Fill ``rows`` and ``cols`` (``axis_buffers``) with bin (ph, pw) of RoI k (geometry
    ``g``, ``deform_geometry``'s) shifted by its offset ``offset[k, :, ph, pw]`` (times
    ``gamma`` times the RoI's size); False, and nothing filled, where that is not
    finite."""
    T = offset.dtype.type
    start_h, start_w, bin_h, bin_w, gh, gw, height, width = g
    off_w = offset[k, 0, ph, pw]
    off_h = offset[k, 1, ph, pw]
    if not (math.isfinite(off_w) and math.isfinite(off_h)):
        return False
    bin_axes(start_h + T(gamma) * height * off_h, bin_h, ph, gh, H, rows)
    bin_axes(start_w + T(gamma) * width * off_w, bin_w, pw, gw, W, cols)
    return True


@parallel_njit
def deform_roi_pool_forward(X, rois, offset, spatial_scale, pooled_h, pooled_w,
                            sampling_ratio, gamma, out):  # fmt: skip
    """out[K, C, pooled_h, pooled_w] = the mean of each shifted bin's sampling points."""
    K, C = out.shape[0], out.shape[1]
    out_bins = out.reshape(K, C, pooled_h * pooled_w)
    for k in prange(K):
        deform_roi_pool_forward_roi(X, rois, offset, k, spatial_scale, pooled_h, pooled_w,
                                    sampling_ratio, gamma, out_bins[k])  # fmt: skip


@njit(cache=True)
def deform_roi_pool_forward_roi(X, rois, offset, k, spatial_scale, pooled_h, pooled_w,
                                sampling_ratio, gamma, out_k):  # fmt: skip
    """One RoI's output ``out_k[C, pooled_h * pooled_w]`` (the forward task's work)."""
    _, H, W, C = X.shape
    Xf = X.reshape(-1)
    n, g, count = deform_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    gh, gw = g[4], g[5]
    rows, cols = axis_buffers(gh, X), axis_buffers(gw, X)
    acc = np.zeros(C, X.dtype)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            p = ph * pooled_w + pw
            if not place_bin(offset, k, ph, pw, g, gamma, H, W, rows, cols):
                out_k[:, p] = np.nan
                continue
            bin_sum(Xf, rows, cols, gh, gw, n, H, W, acc)
            for c in range(C):
                out_k[c, p] = acc[c] / count


@parallel_njit
def deform_roi_pool_backward(G, rois, offset, order, image_start, spatial_scale, pooled_h,
                             pooled_w, sampling_ratio, gamma, channel_block, GX):  # fmt: skip
    """GX[N, H, W, C] (zeroed) += the gradient of G[K, C, pooled_h, pooled_w]."""
    N, C = GX.shape[0], GX.shape[3]
    P = pooled_h * pooled_w
    G_bins = G.reshape(G.shape[0], C, P)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        share = np.empty((P, c1 - c0), GX.dtype)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            deform_roi_pool_backward_roi(G_bins[k], rois, offset, k, spatial_scale, pooled_h,
                                         pooled_w, sampling_ratio, gamma, c0, share,
                                         GX)  # fmt: skip


@njit(cache=True)
def deform_roi_pool_backward_roi(G_k, rois, offset, k, spatial_scale, pooled_h, pooled_w,
                                 sampling_ratio, gamma, c0, share, GX):  # fmt: skip
    """GX[n, :, :, c0:c0 + nc] += RoI k's gradient from ``G_k[C, pooled_h * pooled_w]``, in
    the reference's order per cell: bins, points, corners (``share[P, nc]`` is the task's
    scratch)."""
    _, H, W, C = GX.shape
    nc = share.shape[1]
    GXf = GX.reshape(-1)
    n, g, count = deform_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    gh, gw = g[4], g[5]
    bins_first(G_k, c0, count, share)
    rows, cols = axis_buffers(gh, GX), axis_buffers(gw, GX)
    y_in, x_in = rows[4], cols[4]
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            if not place_bin(offset, k, ph, pw, g, gamma, H, W, rows, cols):
                continue
            grad = share[ph * pooled_w + pw]
            for iy in range(gh):
                for ix in range(gw):
                    if not (y_in[iy] and x_in[ix]):
                        continue
                    w1, w2, w3, w4, o1, o2, o3, o4 = point_corners(rows, cols, iy, ix, n, H, W, C)
                    # four separate passes: corners coincide at the border, and each
                    # must add in the reference's order
                    o = o1 + np.uint64(c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += grad[cc] * w1
                    o = o2 + np.uint64(c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += grad[cc] * w2
                    o = o3 + np.uint64(c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += grad[cc] * w3
                    o = o4 + np.uint64(c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += grad[cc] * w4


@parallel_njit
def deform_roi_pool_offset_backward(G, X, rois, offset, spatial_scale, pooled_h, pooled_w,
                                    sampling_ratio, gamma, grad_offset):  # fmt: skip
    """grad_offset[K, 2, pooled_h, pooled_w] = the gradient of G[K, C, pooled_h, pooled_w]
    w.r.t. the offsets, in ``roiops.reference.deform_roi_pool``'s order: each channel's
    sum over the points (all channels at once, one vector lane each), then the channels'
    sums in order."""
    C = X.shape[3]
    K = G.shape[0]
    for k in prange(K):
        deform_roi_pool_offset_backward_roi(G[k], X, rois, offset, k, spatial_scale,
                                            pooled_h, pooled_w, sampling_ratio, gamma,
                                            np.empty((2, C), X.dtype), grad_offset[k])  # fmt: skip


@njit(cache=True)
def deform_roi_pool_offset_backward_roi(G_k, X, rois, offset, k, spatial_scale, pooled_h,
                                        pooled_w, sampling_ratio, gamma, acc,
                                        grad_offset_k):  # fmt: skip
    """``grad_offset_k[2, pooled_h, pooled_w]``: RoI k's offset gradient from ``G_k[C,
    pooled_h, pooled_w]`` (``acc[2, C]`` is scratch: each channel's sums along x and y)."""
    _, H, W, C = X.shape
    T = X.dtype.type
    Xf = X.reshape(-1)
    n, g, count = deform_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio)
    gh, gw, height, width = g[4], g[5], g[6], g[7]
    rows, cols = axis_buffers(gh, X), axis_buffers(gw, X)
    ly, y_in, y_flat = rows[3], rows[4], rows[5]
    lx, x_in, x_flat = cols[3], cols[4], cols[5]
    share = np.empty(C, X.dtype)
    acc_x, acc_y = acc[0], acc[1]
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            grad_offset_k[0, ph, pw] = 0
            grad_offset_k[1, ph, pw] = 0
            if not place_bin(offset, k, ph, pw, g, gamma, H, W, rows, cols):
                continue
            for c in range(C):
                share[c] = G_k[c, ph, pw] / count
            acc_x[:] = 0
            acc_y[:] = 0
            for iy in range(gh):
                for ix in range(gw):
                    if not (y_in[iy] and x_in[ix]):
                        continue
                    o1, o2, o3, o4 = point_corners(rows, cols, iy, ix, n, H, W, C)[4:]
                    flat_y, flat_x = y_flat[iy], x_flat[ix]
                    fy, fx = ly[iy], lx[ix]  # the point's fractions of its cell
                    for c in range(C):
                        u = np.uint64(c)
                        v1, v2, v3, v4 = Xf[o1 + u], Xf[o2 + u], Xf[o3 + u], Xf[o4 + u]
                        dy = T(0) if flat_y else (T(1) - fx) * (v3 - v1) + fx * (v4 - v2)
                        dx = T(0) if flat_x else (T(1) - fy) * (v2 - v1) + fy * (v4 - v3)
                        acc_x[c] += share[c] * dx
                        acc_y[c] += share[c] * dy
            gx = T(0)
            gy = T(0)
            for c in range(C):
                gx += acc_x[c]
                gy += acc_y[c]
            grad_offset_k[0, ph, pw] = gx * (T(gamma) * width)
            grad_offset_k[1, ph, pw] = gy * (T(gamma) * height)
