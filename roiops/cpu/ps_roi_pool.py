"""Position-sensitive RoIPool on CPU: Numba kernels, forward and deterministic backward.

Quantization as ``roiops.reference.ps_roi_pool`` (torchvision's forward, clipped to the
last row and column), the bins' cell ranges from ``roiops.cpu.roi_pool.bin_edges``. Work
split as ``roiops.cpu.ps_roi_align``: NCHW input, one forward task per RoI; one backward
task per (image, block of input channels) visiting the image's RoIs in input order, the
only writer of its channels' planes (which it zeroes first): bitwise reproducible, and
equal to the reference bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.roi_pool import bin_edges, round_half_away


@njit(cache=True)
def ps_bins(rois, k, spatial_scale, pooled_h, pooled_w, height, width):
    """``(rows, cols)``: RoI k's bins' clipped cell ranges ``[start, end)`` per axis."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    start_w = round_half_away(rois[k, 1] * scale)
    start_h = round_half_away(rois[k, 2] * scale)
    size_w = max(round_half_away(rois[k, 3] * scale) - start_w, 1)
    size_h = max(round_half_away(rois[k, 4] * scale) - start_h, 1)
    # torchvision's forward clips to the last index, not the size
    rows = bin_edges(start_h, size_h, pooled_h, height - 1, rois)
    cols = bin_edges(start_w, size_w, pooled_w, width - 1, rois)
    return rows, cols


@njit(parallel=True, cache=True)
def ps_roi_pool_forward(X, rois, spatial_scale, pooled_h, pooled_w, out):
    """out[K, C_out, pooled_h, pooled_w] from X[N, C, H, W] (C = C_out * pooled_h * pooled_w)."""
    _, C, H, W = X.shape
    K, C_out = out.shape[0], out.shape[1]
    P = pooled_h * pooled_w
    T = X.dtype.type
    Xf = X.reshape(-1)
    for k in prange(K):
        n = int(rois[k, 0])
        rows, cols = ps_bins(rois, k, spatial_scale, pooled_h, pooled_w, H, W)
        acc = np.empty(C_out, X.dtype)
        for ph in range(pooled_h):
            h0, h1 = rows[ph, 0], rows[ph, 1]
            for pw in range(pooled_w):
                w0, w1 = cols[pw, 0], cols[pw, 1]
                p = ph * pooled_w + pw
                if h1 <= h0 or w1 <= w0:
                    for c_out in range(C_out):
                        out[k, c_out, ph, pw] = 0
                    continue
                # cell by cell, all output channels at once: their loads are independent
                # (each output still sums its cells in row-major order)
                acc[:] = 0
                first = np.uint64((n * C + p) * H * W)
                step = np.uint64(P * H * W)  # from one output channel's plane to the next
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        at = first + np.uint64(h * W + w)
                        for c_out in range(C_out):
                            acc[c_out] += Xf[at + np.uint64(c_out) * step]
                area = T((h1 - h0) * (w1 - w0))
                for c_out in range(C_out):
                    out[k, c_out, ph, pw] = acc[c_out] / area


@njit(parallel=True, cache=True)
def ps_roi_pool_backward(G, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                         channel_block, GX):  # fmt: skip
    """GX[N, C, H, W] (NCHW, uninitialised: each task zeroes its planes first) = the
    gradient of G[K, C_out, pooled_h, pooled_w]."""
    N, C, H, W = GX.shape
    T = GX.dtype.type
    P = pooled_h * pooled_w
    GXf = GX.reshape(-1)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        GXf[(n * C + c0) * H * W : (n * C + c1) * H * W] = 0
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            rows, cols = ps_bins(rois, k, spatial_scale, pooled_h, pooled_w, H, W)
            # bin by bin, its channels in [c0, c1) P apart: no division per channel
            for ph in range(pooled_h):
                h0, h1 = rows[ph, 0], rows[ph, 1]
                for pw in range(pooled_w):
                    w0, w1 = cols[pw, 0], cols[pw, 1]
                    if h1 <= h0 or w1 <= w0:
                        continue
                    area = T((h1 - h0) * (w1 - w0))
                    p = ph * pooled_w + pw
                    for c_out in range((c0 - p + P - 1) // P, (c1 - p + P - 1) // P):
                        share = G[k, c_out, ph, pw] / area
                        plane = np.uint64((n * C + c_out * P + p) * H * W)
                        for h in range(h0, h1):
                            row = plane + np.uint64(h * W)
                            for w in range(w0, w1):
                                GXf[row + np.uint64(w)] += share
