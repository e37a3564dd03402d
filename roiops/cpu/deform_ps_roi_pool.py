"""Deformable position-sensitive RoI pooling on CPU: Numba kernels, forward and
deterministic backward.

Channels-last input (``X[N, H, W, C]``) as ``roiops.cpu.deform_roi_pool``: each bin
(and class of output channels, which has its own offsets) resolves its kept points once
(``bin_points``), then every channel of the class reads them, one vector lane each, in
``roiops.reference.deform_ps_roi_pool``'s arithmetic, which the tests check bit for bit.

* forward and offset gradient: one task per RoI.
* input gradient: one task per (image, block of output channels), visiting the image's
  RoIs in input order; a task owns its output channels' input channels, so every
  gradient cell is summed by one thread in one fixed order (the reference's): bitwise
  reproducible for any number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.parallel import parallel_njit


@njit(cache=True)
def round_float(v, T):
    """C's ``roundf`` (halves away from zero) as a float of type T, exact for any value."""
    magnitude = abs(v)
    whole = np.floor(magnitude)
    if magnitude - whole >= T(0.5):
        whole = whole + T(1)
    return T(-whole) if v < 0 else T(whole)


@njit(cache=True)
def psroi_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sample_per_part):
    """(n, (start_h, start_w, height, width, bin_h, bin_w, step_h, step_w)) of RoI k
    (``roiops.reference.deform_ps_roi_pool.geometry``)."""
    T = rois.dtype.type
    s = T(spatial_scale)
    start_w = round_float(rois[k, 1], T) * s - T(0.5)
    start_h = round_float(rois[k, 2], T) * s - T(0.5)
    end_w = (round_float(rois[k, 3], T) + T(1)) * s - T(0.5)
    end_h = (round_float(rois[k, 4], T) + T(1)) * s - T(0.5)
    width = max(end_w - start_w, T(0.1))
    height = max(end_h - start_h, T(0.1))
    bin_w = width / T(pooled_w)
    bin_h = height / T(pooled_h)
    g = (start_h, start_w, height, width, bin_h, bin_w, bin_h / T(sample_per_part),
         bin_w / T(sample_per_part))  # fmt: skip
    return int(rois[k, 0]), g


@njit(cache=True)
def axis_table(pooled, part_size, group_size, T):
    """``table[pooled, 2]``: each bin's part and position-sensitive group along an axis
    (``part_index``, ``group_index`` of the reference)."""
    table = np.empty((pooled, 2), np.int64)
    for i in range(pooled):
        table[i, 0] = min(int(math.floor(T(T(i) / T(pooled)) * T(part_size))), part_size - 1)
        table[i, 1] = min(i * group_size // pooled, group_size - 1)
    return table


@njit(cache=True)
def bin_shift(offset, k, cls, part_h, part_w, trans_std):
    """(dy, dx, ok): the bin's move in units of the RoI's size, and whether its offset is
    finite ((0, 0) without offsets)."""
    T = offset.dtype.type
    if offset.shape[1] == 0:
        return T(0), T(0), True
    off_w = offset[k, 2 * cls, part_h, part_w]
    off_h = offset[k, 2 * cls + 1, part_h, part_w]
    if not (math.isfinite(off_w) and math.isfinite(off_h)):
        return T(0), T(0), False
    return off_h * T(trans_std), off_w * T(trans_std), True


@njit(cache=True)
def bin_points(g, ph, pw, dy, dx, sample_per_part, H, W, cells, fractions):
    """The kept points of bin (ph, pw) moved by (dy, dx) RoI sizes, in row-major order:
    their count m; ``cells[:m]`` holds (y0, y1, x0, x1), ``fractions[:m]`` (fy, fx)."""
    T = fractions.dtype.type
    start_h, start_w, height, width, bin_h, bin_w, step_h, step_w = g
    h_start = T(ph) * bin_h + start_h
    h_start = h_start + dy * height
    w_start = T(pw) * bin_w + start_w
    w_start = w_start + dx * width
    m = 0
    for ih in range(sample_per_part):
        for iw in range(sample_per_part):
            x = w_start + T(iw) * step_w
            y = h_start + T(ih) * step_h
            if x < T(-0.5) or x > T(W) - T(0.5) or y < T(-0.5) or y > T(H) - T(0.5):
                continue
            x = min(max(x, T(0)), T(W - 1))
            y = min(max(y, T(0)), T(H - 1))
            y0, x0 = np.floor(y), np.floor(x)
            cells[m, 0], cells[m, 1] = int(y0), int(np.ceil(y))
            cells[m, 2], cells[m, 3] = int(x0), int(np.ceil(x))
            fractions[m, 0], fractions[m, 1] = y - y0, x - x0
            m += 1
    return m


@njit(cache=True)
def corner_weights(fy, fx, T):
    """The bilinear weights of a point's corners (y0, x0), (y1, x0), (y0, x1), (y1, x1)
    at fractions (fy, fx) of its cell, in the reference's arithmetic."""
    return (T(1) - fx) * (T(1) - fy), (T(1) - fx) * fy, fx * (T(1) - fy), fx * fy


@njit(cache=True)
def class_channels(cls, num_classes, C_out):
    """The output channels [c0, c1) of offset class ``cls`` (all of them without
    offsets)."""
    per_class = C_out // max(num_classes, 1)
    return cls * per_class, (cls + 1) * per_class


@parallel_njit
def deform_ps_roi_pool_forward(X, rois, offset, spatial_scale, pooled_h, pooled_w,
                               sample_per_part, group_size, part_size, trans_std,
                               out):  # fmt: skip
    """out[K, C_out, pooled_h, pooled_w] = the mean of each bin's kept points."""
    K = out.shape[0]
    T = X.dtype.type
    rows = axis_table(pooled_h, part_size, group_size, T)
    cols = axis_table(pooled_w, part_size, group_size, T)
    for k in prange(K):
        deform_ps_roi_pool_forward_roi(X, rois, offset, k, spatial_scale, pooled_h, pooled_w,
                                       sample_per_part, group_size, trans_std, rows, cols,
                                       out[k])  # fmt: skip


@njit(cache=True)
def deform_ps_roi_pool_forward_roi(X, rois, offset, k, spatial_scale, pooled_h, pooled_w,
                                   sample_per_part, group_size, trans_std, rows, cols,
                                   out_k):  # fmt: skip
    """One RoI's output ``out_k[C_out, pooled_h, pooled_w]`` (the forward task's work)."""
    _, H, W, _ = X.shape
    T = X.dtype.type
    C_out = out_k.shape[0]
    num_classes = offset.shape[1] // 2
    n, g = psroi_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sample_per_part)
    cells = np.empty((sample_per_part * sample_per_part, 4), np.int64)
    fractions = np.empty((sample_per_part * sample_per_part, 2), X.dtype)
    acc = np.empty(C_out, X.dtype)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            j = rows[ph, 1] * group_size + cols[pw, 1]  # (the group of maps)
            for cls in range(max(num_classes, 1)):
                c0, c1 = class_channels(cls, num_classes, C_out)
                dy, dx, ok = bin_shift(offset, k, cls, rows[ph, 0], cols[pw, 0], trans_std)
                if not ok:
                    out_k[c0:c1, ph, pw] = np.nan
                    continue
                m = bin_points(g, ph, pw, dy, dx, sample_per_part, H, W, cells, fractions)
                acc[c0:c1] = 0
                for i in range(m):
                    y0, y1, x0, x1 = cells[i, 0], cells[i, 1], cells[i, 2], cells[i, 3]
                    w00, w10, w01, w11 = corner_weights(fractions[i, 0], fractions[i, 1], T)
                    for c in range(c0, c1):
                        ci = c * group_size * group_size + j
                        value = w00 * X[n, y0, x0, ci]
                        value = value + w10 * X[n, y1, x0, ci]
                        value = value + w01 * X[n, y0, x1, ci]
                        value = value + w11 * X[n, y1, x1, ci]
                        acc[c] += value
                for c in range(c0, c1):
                    out_k[c, ph, pw] = acc[c] / T(m) if m > 0 else T(0)


@parallel_njit
def deform_ps_roi_pool_backward(G, rois, offset, order, image_start, spatial_scale, pooled_h,
                                pooled_w, sample_per_part, group_size, part_size, trans_std,
                                channel_block, GX):  # fmt: skip
    """GX[N, H, W, C] (zeroed) += the gradient of G[K, C_out, pooled_h, pooled_w]; a task
    owns a block of output channels and their input channels."""
    N = GX.shape[0]
    C_out = G.shape[1]
    T = GX.dtype.type
    rows = axis_table(pooled_h, part_size, group_size, T)
    cols = axis_table(pooled_w, part_size, group_size, T)
    n_blocks = (C_out + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, o0, o1 = channel_task(task, n_blocks, channel_block, C_out)
        cells = np.empty((sample_per_part * sample_per_part, 4), np.int64)
        fractions = np.empty((sample_per_part * sample_per_part, 2), GX.dtype)
        share = np.empty(C_out, GX.dtype)
        for j in range(image_start[n], image_start[n + 1]):
            deform_ps_roi_pool_backward_roi(G, rois, offset, order[j], spatial_scale,
                                            pooled_h, pooled_w, sample_per_part, group_size,
                                            trans_std, rows, cols, o0, o1, cells, fractions,
                                            share, GX)  # fmt: skip


@njit(cache=True)
def deform_ps_roi_pool_backward_roi(G, rois, offset, k, spatial_scale, pooled_h, pooled_w,
                                    sample_per_part, group_size, trans_std, rows, cols, o0,
                                    o1, cells, fractions, share, GX):  # fmt: skip
    """GX += RoI k's gradient to the input channels of output channels [o0, o1), in the
    reference's order per cell: bins, points, corners (``cells``, ``fractions``,
    ``share`` are the task's scratch)."""
    _, H, W, _ = GX.shape
    T = GX.dtype.type
    C_out = G.shape[1]
    num_classes = offset.shape[1] // 2
    n, g = psroi_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sample_per_part)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            j = rows[ph, 1] * group_size + cols[pw, 1]
            for cls in range(max(num_classes, 1)):
                c0, c1 = class_channels(cls, num_classes, C_out)
                c0, c1 = max(c0, o0), min(c1, o1)
                if c0 >= c1:
                    continue
                dy, dx, ok = bin_shift(offset, k, cls, rows[ph, 0], cols[pw, 0], trans_std)
                if not ok:
                    continue
                m = bin_points(g, ph, pw, dy, dx, sample_per_part, H, W, cells, fractions)
                if m == 0:
                    continue
                for c in range(c0, c1):
                    share[c] = G[k, c, ph, pw] / T(m)
                for i in range(m):
                    y0, y1, x0, x1 = cells[i, 0], cells[i, 1], cells[i, 2], cells[i, 3]
                    w00, w10, w01, w11 = corner_weights(fractions[i, 0], fractions[i, 1], T)
                    # four separate passes: corners coincide on whole cells, and each
                    # must add in the reference's order
                    for c in range(c0, c1):
                        GX[n, y0, x0, c * group_size * group_size + j] += w00 * share[c]
                    for c in range(c0, c1):
                        GX[n, y1, x0, c * group_size * group_size + j] += w10 * share[c]
                    for c in range(c0, c1):
                        GX[n, y0, x1, c * group_size * group_size + j] += w01 * share[c]
                    for c in range(c0, c1):
                        GX[n, y1, x1, c * group_size * group_size + j] += w11 * share[c]


@parallel_njit
def deform_ps_roi_pool_offset_backward(G, X, rois, offset, spatial_scale, pooled_h, pooled_w,
                                       sample_per_part, group_size, part_size, trans_std,
                                       grad_offset):  # fmt: skip
    """grad_offset (``offset``'s shape) = the gradient of G[K, C_out, pooled_h, pooled_w]
    w.r.t. the offsets, in ``roiops.reference.deform_ps_roi_pool``'s order."""
    K = G.shape[0]
    T = X.dtype.type
    rows = axis_table(pooled_h, part_size, group_size, T)
    cols = axis_table(pooled_w, part_size, group_size, T)
    for k in prange(K):
        deform_ps_roi_pool_offset_backward_roi(G, X, rois, offset, k, spatial_scale, pooled_h,
                                               pooled_w, sample_per_part, group_size,
                                               trans_std, rows, cols, grad_offset[k])  # fmt: skip


@njit(cache=True)
def deform_ps_roi_pool_offset_backward_roi(G, X, rois, offset, k, spatial_scale, pooled_h,
                                           pooled_w, sample_per_part, group_size, trans_std,
                                           rows, cols, grad_offset_k):  # fmt: skip
    """``grad_offset_k[2 * classes, part_size, part_size]``: RoI k's offset gradient."""
    _, H, W, _ = X.shape
    T = X.dtype.type
    C_out = G.shape[1]
    num_classes = offset.shape[1] // 2
    n, g = psroi_geometry(rois, k, spatial_scale, pooled_h, pooled_w, sample_per_part)
    height, width = g[2], g[3]
    cells = np.empty((sample_per_part * sample_per_part, 4), np.int64)
    fractions = np.empty((sample_per_part * sample_per_part, 2), X.dtype)
    share = np.empty(C_out, X.dtype)
    acc_x = np.empty(C_out, X.dtype)
    acc_y = np.empty(C_out, X.dtype)
    grad_offset_k[:] = 0
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            j = rows[ph, 1] * group_size + cols[pw, 1]
            part_h, part_w = rows[ph, 0], cols[pw, 0]
            for cls in range(num_classes):
                c0, c1 = class_channels(cls, num_classes, C_out)
                dy, dx, ok = bin_shift(offset, k, cls, part_h, part_w, trans_std)
                m = bin_points(g, ph, pw, dy, dx, sample_per_part, H, W, cells, fractions)
                if not ok or m == 0:
                    continue
                for c in range(c0, c1):
                    share[c] = G[k, c, ph, pw] / T(m)
                    acc_x[c] = 0
                    acc_y[c] = 0
                for i in range(m):
                    y0, y1, x0, x1 = cells[i, 0], cells[i, 1], cells[i, 2], cells[i, 3]
                    fy, fx = fractions[i, 0], fractions[i, 1]
                    for c in range(c0, c1):
                        ci = c * group_size * group_size + j
                        v00, v10 = X[n, y0, x0, ci], X[n, y1, x0, ci]
                        v01, v11 = X[n, y0, x1, ci], X[n, y1, x1, ci]
                        slope_x = v11 * fy + v01 * (T(1) - fy) - v10 * fy - v00 * (T(1) - fy)
                        slope_y = v11 * fx + v10 * (T(1) - fx) - v01 * fx - v00 * (T(1) - fx)
                        acc_x[c] += slope_x * share[c]
                        acc_y[c] += slope_y * share[c]
                gx = T(0)
                gy = T(0)
                for c in range(c0, c1):
                    gx += acc_x[c]
                    gy += acc_y[c]
                grad_offset_k[2 * cls, part_h, part_w] += gx * (T(trans_std) * width)
                grad_offset_k[2 * cls + 1, part_h, part_w] += gy * (T(trans_std) * height)
