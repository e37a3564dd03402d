"""Position-sensitive RoIPool on CPU: Numba kernels, forward and deterministic backward.

Quantization as ``roiops.reference.ps_roi_pool`` (torchvision's forward, clipped to the
last row and column), the bins' cell ranges from ``roiops.cpu.roi_pool.bin_edges``.

Bin p of output channel c_out reads input plane ``c_out * P + p``; the planes are read
as they lie (NCHW). Forward and backward run one task per (image, bin p, block of output
channels): the task's planes (one per output channel of the block) stay in cache while
it visits the image's RoIs in input order, so each plane is read (forward) or written
(backward) from memory once, not once per RoI. In the backward the task is the only
writer of its planes (which it zeroes first) and adds to each cell in RoI order: bitwise
reproducible for any number of threads, and equal to the reference bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from roiops.cpu.parallel import parallel_njit
from roiops.cpu.roi_pool import bin_edges, round_half_away
from roiops.cpu.runs import add_to_run4, add_to_run8


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


@parallel_njit
def bin_tables(rois, spatial_scale, pooled_h, pooled_w, height, width):
    """``(rows[K, pooled_h, 2], cols[K, pooled_w, 2])``: every RoI's ``ps_bins``."""
    K = rois.shape[0]
    rows = np.empty((K, pooled_h, 2), np.int64)
    cols = np.empty((K, pooled_w, 2), np.int64)
    for k in prange(K):
        r, c = ps_bins(rois, k, spatial_scale, pooled_h, pooled_w, height, width)
        # element by element: an array-to-array slice assignment would pull in Numba's
        # shape-mismatch error formatting, seconds of compile time on first use
        for i in range(pooled_h):
            rows[k, i, 0], rows[k, i, 1] = r[i, 0], r[i, 1]
        for i in range(pooled_w):
            cols[k, i, 0], cols[k, i, 1] = c[i, 0], c[i, 1]
    return rows, cols


@njit(cache=True)
def bin_task(task, pooled_w, P, n_blocks, channel_block, C_out):
    """(n, p, ph, pw, c0, c1): the image, bin and output channels [c0, c1) of ``task``
    (tasks run over (image, bin, block of output channels), blocks fastest)."""
    n = task // (P * n_blocks)
    rest = task - n * P * n_blocks
    p = rest // n_blocks
    c0 = (rest - p * n_blocks) * channel_block
    ph = p // pooled_w
    return n, p, ph, p - ph * pooled_w, c0, min(C_out, c0 + channel_block)


@njit(cache=True)
def zero_planes(flat, first, step, count, plane):
    """Zero ``count`` planes of ``plane`` cells, ``step`` apart from ``flat[first]`` on
    (a backward task's planes, before it adds to them)."""
    for c in range(count):
        at = first + np.uint64(c) * step
        flat[at : at + plane] = 0


@parallel_njit
def ps_roi_pool_forward(X, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                        channel_block, out):  # fmt: skip
    """out[K, C_out, pooled_h, pooled_w] from X[N, C, H, W] (C = C_out * pooled_h * pooled_w)."""
    N, C, H, W = X.shape
    K, C_out = out.shape[0], out.shape[1]
    T = X.dtype.type
    P = pooled_h * pooled_w
    rows, cols = bin_tables(rois, spatial_scale, pooled_h, pooled_w, H, W)
    out_bins = out.reshape(K, C_out, P)
    Xf = X.reshape(-1)
    step = np.uint64(P * H * W)  # from one output channel's plane to the next
    n_blocks = (C_out + channel_block - 1) // channel_block
    for task in prange(N * P * n_blocks):
        n, p, ph, pw, c0, c1 = bin_task(task, pooled_w, P, n_blocks, channel_block, C_out)
        first = np.uint64((n * C + c0 * P + p) * H * W)
        nc = c1 - c0
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            h0, h1 = rows[k, ph, 0], rows[k, ph, 1]
            w0, w1 = cols[k, pw, 0], cols[k, pw, 1]
            if h1 <= h0 or w1 <= w0:
                out_bins[k, c0:c1, p] = 0
                continue
            area = T((h1 - h0) * (w1 - w0))
            # four output channels at a time, each summed in a register in row-major
            # cell order: four independent chains and no accumulator traffic through
            # memory (a quarter faster than a channel vector in memory)
            quads = nc - nc % 4
            for c in range(0, quads, 4):
                b0 = first + np.uint64(c) * step
                b1 = b0 + step
                b2 = b1 + step
                b3 = b2 + step
                a0 = a1 = a2 = a3 = T(0)
                for h in range(h0, h1):
                    row = np.uint64(h * W)
                    for w in range(w0, w1):
                        at = row + np.uint64(w)
                        a0 += Xf[b0 + at]
                        a1 += Xf[b1 + at]
                        a2 += Xf[b2 + at]
                        a3 += Xf[b3 + at]
                out_bins[k, c0 + c, p] = a0 / area
                out_bins[k, c0 + c + 1, p] = a1 / area
                out_bins[k, c0 + c + 2, p] = a2 / area
                out_bins[k, c0 + c + 3, p] = a3 / area
            for c in range(quads, nc):
                b0 = first + np.uint64(c) * step
                a0 = T(0)
                for h in range(h0, h1):
                    row = np.uint64(h * W)
                    for w in range(w0, w1):
                        a0 += Xf[b0 + row + np.uint64(w)]
                out_bins[k, c0 + c, p] = a0 / area


@njit(inline="always", cache=True)
def add_to_rectangle(flat, corner, row_length, height, width, value):
    """``value`` added to ``height`` rows of ``width`` cells from ``flat[corner]``, rows
    ``row_length`` apart: a masked vector access per row where rows are short
    (``roiops.cpu.runs``), else cell by cell; the same sums either way."""
    stride = np.uint64(row_length)
    if width <= 4:
        for h in range(height):
            add_to_run4(flat, corner + np.uint64(h) * stride, width, value)
    elif width <= 8:
        for h in range(height):
            add_to_run8(flat, corner + np.uint64(h) * stride, width, value)
    else:
        for h in range(height):
            row = corner + np.uint64(h) * stride
            for w in range(width):
                flat[row + np.uint64(w)] += value


@parallel_njit
def ps_roi_pool_backward(G, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                         channel_block, GX):  # fmt: skip
    """GX[N, C, H, W] (NCHW, uninitialised: each task zeroes its planes first) = the
    gradient of G[K, C_out, pooled_h, pooled_w]."""
    N, C, H, W = GX.shape
    K, C_out = G.shape[0], G.shape[1]
    T = GX.dtype.type
    P = pooled_h * pooled_w
    rows, cols = bin_tables(rois, spatial_scale, pooled_h, pooled_w, H, W)
    G_bins = G.reshape(K, C_out, P)
    GXf = GX.reshape(-1)
    plane = np.uint64(H * W)
    step = np.uint64(P * H * W)
    n_blocks = (C_out + channel_block - 1) // channel_block
    for task in prange(N * P * n_blocks):
        n, p, ph, pw, c0, c1 = bin_task(task, pooled_w, P, n_blocks, channel_block, C_out)
        first = np.uint64((n * C + c0 * P + p) * H * W)
        zero_planes(GXf, first, step, c1 - c0, plane)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            h0, h1 = rows[k, ph, 0], rows[k, ph, 1]
            w0, w1 = cols[k, pw, 0], cols[k, pw, 1]
            if h1 <= h0 or w1 <= w0:
                continue
            area = T((h1 - h0) * (w1 - w0))
            corner = first + np.uint64(h0 * W + w0)
            for c in range(c1 - c0):
                share = G_bins[k, c0 + c, p] / area
                add_to_rectangle(GXf, corner + np.uint64(c) * step, W, h1 - h0, w1 - w0, share)
