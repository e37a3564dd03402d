"""Position-sensitive RoIAlign on CPU: Numba kernels, forward and deterministic backward.

Bin (ph, pw) of output channel c_out reads input channel ``(c_out * PH + ph) * PW + pw``
(``roiops.reference.ps_roi_align``), so each output reads one plane: the kernels read
the input as it is laid out in NCHW and share RoIAlign's sampling tables
(``roiops.cpu.sampling``, aligned=True), computed once per call for every RoI.

Both kernels run one task per (image, bin p, block of output channels), as
``roiops.cpu.ps_roi_pool``: the task's planes (one per output channel of the block) stay
in cache while it visits the image's RoIs in input order, so each plane is read
(forward) or written (backward) from memory about once, not once per RoI. Per RoI the
task resolves its bin's sampling points once (``bin_points``: the four neighbours'
in-plane offsets and weights of every point inside the map); the channel loops only
load, multiply and add. In the backward the task is the only writer of its planes
(which it zeroes first) and adds to each cell in RoI order, then point and corner
order: bitwise reproducible for any number of threads, and the reference's order (so
equal to it bit for bit).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from roiops.cpu.parallel import parallel_njit
from roiops.cpu.ps_roi_pool import bin_task, zero_planes
from roiops.cpu.sampling import all_axis_tables


@njit(cache=True)
def bin_points(tables, k, ph, pw, width, offsets, weights):
    """Number of sampling points of RoI k's bin (ph, pw) inside the map; fills
    ``offsets[i, :]`` (in-plane offsets of point i's four neighbours, as unsigned
    integers for the kernels' plane offsets) and ``weights[i, :]`` (their bilinear
    weights, the products torchvision forms) for each, in (iy, ix) order."""
    grid, start, low, high, w_low, w_high, valid = tables
    grid_h, grid_w = grid[k, 0], grid[k, 1]
    r0 = start[k, 0] + ph * grid_h
    q0 = start[k, 1] + pw * grid_w
    m = 0
    for r in range(r0, r0 + grid_h):
        if not valid[0, r]:
            continue
        for q in range(q0, q0 + grid_w):
            if not valid[1, q]:
                continue
            offsets[m, 0] = low[0, r] * width + low[1, q]
            offsets[m, 1] = low[0, r] * width + high[1, q]
            offsets[m, 2] = high[0, r] * width + low[1, q]
            offsets[m, 3] = high[0, r] * width + high[1, q]
            weights[m, 0] = w_low[0, r] * w_low[1, q]
            weights[m, 1] = w_low[0, r] * w_high[1, q]
            weights[m, 2] = w_high[0, r] * w_low[1, q]
            weights[m, 3] = w_high[0, r] * w_high[1, q]
            m += 1
    return m


@njit(cache=True)
def most_points(grid):
    """The largest bin grid (points per bin) over the RoIs: the task buffers' size."""
    most = 1
    for k in range(grid.shape[0]):
        most = max(most, grid[k, 0] * grid[k, 1])
    return most


@njit(cache=True)
def point_buffers(most, dtype_probe):
    """A task's ``(offsets, weights)`` buffers for ``bin_points``: ``most`` points."""
    return np.empty((most, 4), np.uint64), np.empty((most, 4), dtype_probe.dtype)


@njit(cache=True)
def bin_mean(Xf, base, offsets, weights, m, count):
    """One output: the mean over the bin's m points of the bilinear interpolation of
    the plane at ``base`` (the points outside the map count as zeros)."""
    T = weights.dtype.type
    acc = T(0)
    for i in range(m):
        acc += (
            weights[i, 0] * Xf[base + offsets[i, 0]]
            + weights[i, 1] * Xf[base + offsets[i, 1]]
            + weights[i, 2] * Xf[base + offsets[i, 2]]
            + weights[i, 3] * Xf[base + offsets[i, 3]]
        )
    return acc / count


@parallel_njit
def ps_roi_align_forward(X, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                         sampling_ratio, channel_block, out):  # fmt: skip
    """out[K, C_out, pooled_h, pooled_w] from X[N, C, H, W] (C = C_out * pooled_h * pooled_w).

    ``order[image_start[n]:image_start[n + 1]]`` lists image n's RoIs in input order.
    """
    N, C, H, W = X.shape
    K, C_out = out.shape[0], out.shape[1]
    T = X.dtype.type
    P = pooled_h * pooled_w
    tables = all_axis_tables(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, H, W, X)
    grid = tables[0]
    most = most_points(grid)
    out_bins = out.reshape(K, C_out, P)
    Xf = X.reshape(-1)
    step = np.uint64(P * H * W)  # from one output channel's plane to the next
    n_blocks = (C_out + channel_block - 1) // channel_block
    for task in prange(N * P * n_blocks):
        n, p, ph, pw, c0, c1 = bin_task(task, pooled_w, P, n_blocks, channel_block, C_out)
        first = np.uint64((n * C + c0 * P + p) * H * W)
        nc = c1 - c0
        offsets, weights = point_buffers(most, X)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            m = bin_points(tables, k, ph, pw, W, offsets, weights)
            count = T(max(grid[k, 0] * grid[k, 1], 1))
            # four output channels at a time, each summed in a register in point order
            # (as the reference): four independent chains share each point's loads of
            # offsets and weights
            quads = nc - nc % 4
            for c in range(0, quads, 4):
                b0 = first + np.uint64(c) * step
                b1 = b0 + step
                b2 = b1 + step
                b3 = b2 + step
                a0 = a1 = a2 = a3 = T(0)
                for i in range(m):
                    o0, o1, o2, o3 = offsets[i, 0], offsets[i, 1], offsets[i, 2], offsets[i, 3]
                    w0, w1, w2, w3 = weights[i, 0], weights[i, 1], weights[i, 2], weights[i, 3]
                    a0 += w0 * Xf[b0 + o0] + w1 * Xf[b0 + o1] + w2 * Xf[b0 + o2] + w3 * Xf[b0 + o3]
                    a1 += w0 * Xf[b1 + o0] + w1 * Xf[b1 + o1] + w2 * Xf[b1 + o2] + w3 * Xf[b1 + o3]
                    a2 += w0 * Xf[b2 + o0] + w1 * Xf[b2 + o1] + w2 * Xf[b2 + o2] + w3 * Xf[b2 + o3]
                    a3 += w0 * Xf[b3 + o0] + w1 * Xf[b3 + o1] + w2 * Xf[b3 + o2] + w3 * Xf[b3 + o3]
                out_bins[k, c0 + c, p] = a0 / count
                out_bins[k, c0 + c + 1, p] = a1 / count
                out_bins[k, c0 + c + 2, p] = a2 / count
                out_bins[k, c0 + c + 3, p] = a3 / count
            for c in range(quads, nc):
                base = first + np.uint64(c) * step
                out_bins[k, c0 + c, p] = bin_mean(Xf, base, offsets, weights, m, count)


@parallel_njit
def ps_roi_align_backward(G, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                          sampling_ratio, channel_block, GX):  # fmt: skip
    """GX[N, C, H, W] (NCHW, uninitialised: each task zeroes its own planes first, so
    the pages are touched in parallel) = the gradient of G[K, C_out, pooled_h, pooled_w].

    ``order[image_start[n]:image_start[n + 1]]`` lists image n's RoIs in input order.
    """
    N, C, H, W = GX.shape
    K, C_out = G.shape[0], G.shape[1]
    T = GX.dtype.type
    P = pooled_h * pooled_w
    tables = all_axis_tables(rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, H, W, GX)
    grid = tables[0]
    most = most_points(grid)
    G_bins = G.reshape(K, C_out, P)
    GXf = GX.reshape(-1)
    plane = np.uint64(H * W)
    step = np.uint64(P * H * W)
    n_blocks = (C_out + channel_block - 1) // channel_block
    for task in prange(N * P * n_blocks):
        n, p, ph, pw, c0, c1 = bin_task(task, pooled_w, P, n_blocks, channel_block, C_out)
        first = np.uint64((n * C + c0 * P + p) * H * W)
        zero_planes(GXf, first, step, c1 - c0, plane)
        offsets, weights = point_buffers(most, GX)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            m = bin_points(tables, k, ph, pw, W, offsets, weights)
            count = T(max(grid[k, 0] * grid[k, 1], 1))
            # (g * w) / count, as torchvision and the reference; where count is a power
            # of two (sampling_ratio 2: 4 points), times 1 / count gives the same bits
            # (both round the same real number) without a division per cell
            inverse = T(1) / count
            exact = (int(count) & (int(count) - 1)) == 0
            for c in range(c1 - c0):
                g = G_bins[k, c0 + c, p]
                at = first + np.uint64(c) * step
                for i in range(m):
                    for corner in range(4):
                        v = g * weights[i, corner]
                        v = v * inverse if exact else v / count
                        GXf[at + offsets[i, corner]] += v
