"""CropAndResize on CPU: Numba kernels, forward and deterministic backward.

Channels-last input (``X[N, H, W, C]``): a sample's corners are four contiguous channel
vectors. Each box resolves its crop's sample positions once per axis (``positions``), in
``roiops.reference.crop_and_resize``'s arithmetic, which the tests check bit for bit.

* forward and box gradient: one task per box;
* input gradient: one task per (image, block of channels), visiting the image's boxes
  in input order: every gradient cell is summed by one thread in one fixed order (the
  reference's), bitwise reproducible for any number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.parallel import parallel_njit
from roiops.cpu.roi_pool import round_half_away


@njit(cache=True)
def positions(lo, hi, size, crop, T):
    """``table[crop, 3]``: each sample's position along an axis of ``size`` cells and its
    derivatives w.r.t. the box's edges ``lo`` and ``hi``
    (``roiops.reference.crop_and_resize.positions``)."""
    table = np.empty((crop, 3), T)
    last = T(size - 1)
    if crop == 1:
        table[0, 0] = T(0.5) * (lo + hi) * last
        table[0, 1] = T(0.5) * last
        table[0, 2] = T(0.5) * last
        return table
    scale = (hi - lo) * last / T(crop - 1)
    ratio = last / T(crop - 1)
    for i in range(crop):
        table[i, 0] = lo * last + T(i) * scale
        table[i, 1] = last - T(i) * ratio
        table[i, 2] = T(i) * ratio
    return table


@njit(cache=True)
def box_axes(rois, k, H, W, crop_h, crop_w):
    """(n, rows, cols): box k's image and its crop's ``positions`` along each axis."""
    T = rois.dtype.type
    rows = positions(T(rois[k, 1]), T(rois[k, 3]), H, crop_h, T)
    cols = positions(T(rois[k, 2]), T(rois[k, 4]), W, crop_w, T)
    return int(rois[k, 0]), rows, cols


@njit(cache=True)
def inside(v, size):
    """A sample at ``v`` reads the image (NaN does not)."""
    return v >= 0 and v <= size - 1


@parallel_njit
def crop_and_resize_forward(X, rois, crop_h, crop_w, nearest, extrapolation_value, out):
    """out[K, C, crop_h, crop_w] = each box's crop, bilinear (or nearest)."""
    for k in prange(out.shape[0]):
        crop_and_resize_forward_box(X, rois, k, crop_h, crop_w, nearest, extrapolation_value,
                                    out[k])  # fmt: skip


@njit(cache=True)
def crop_and_resize_forward_box(X, rois, k, crop_h, crop_w, nearest, extrapolation_value,
                                out_k):  # fmt: skip
    """One box's crop ``out_k[C, crop_h, crop_w]`` (the forward task's work)."""
    _, H, W, C = X.shape
    T = rois.dtype.type
    n, rows, cols = box_axes(rois, k, H, W, crop_h, crop_w)
    for i in range(crop_h):
        y = rows[i, 0]
        for j in range(crop_w):
            x = cols[j, 0]
            if not (inside(y, H) and inside(x, W)):
                out_k[:, i, j] = extrapolation_value
                continue
            if nearest:
                yy, xx = round_half_away(y), round_half_away(x)
                for c in range(C):
                    out_k[c, i, j] = X[n, yy, xx, c]
                continue
            top, bottom = math.floor(y), math.ceil(y)
            left, right = math.floor(x), math.ceil(x)
            y_lerp, x_lerp = y - T(top), x - T(left)
            for c in range(C):
                tl, tr = T(X[n, top, left, c]), T(X[n, top, right, c])
                bl, br = T(X[n, bottom, left, c]), T(X[n, bottom, right, c])
                upper = tl + (tr - tl) * x_lerp
                lower = bl + (br - bl) * x_lerp
                out_k[c, i, j] = upper + (lower - upper) * y_lerp


@parallel_njit
def crop_and_resize_backward(G, rois, order, image_start, crop_h, crop_w, nearest,
                             channel_block, GX):  # fmt: skip
    """GX[N, H, W, C] (zeroed) += the gradient of G[K, C, crop_h, crop_w]."""
    N, H, W, C = GX.shape
    T = rois.dtype.type
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        for s in range(image_start[n], image_start[n + 1]):
            k = order[s]
            _, rows, cols = box_axes(rois, k, H, W, crop_h, crop_w)
            for i in range(crop_h):
                y = rows[i, 0]
                if not inside(y, H):
                    continue
                top, bottom = math.floor(y), math.ceil(y)
                y_lerp = y - T(top)
                for j in range(crop_w):
                    x = cols[j, 0]
                    if not inside(x, W):
                        continue
                    if nearest:
                        yy, xx = round_half_away(y), round_half_away(x)
                        for c in range(c0, c1):
                            GX[n, yy, xx, c] += G[k, c, i, j]
                        continue
                    left, right = math.floor(x), math.ceil(x)
                    x_lerp = x - T(left)
                    for c in range(c0, c1):
                        g = T(G[k, c, i, j])
                        upper = (T(1) - y_lerp) * g
                        GX[n, top, left, c] += (T(1) - x_lerp) * upper
                        GX[n, top, right, c] += x_lerp * upper
                        lower = y_lerp * g
                        GX[n, bottom, left, c] += (T(1) - x_lerp) * lower
                        GX[n, bottom, right, c] += x_lerp * lower


@parallel_njit
def crop_and_resize_box_backward(G, X, rois, crop_h, crop_w, grad_boxes):
    """grad_boxes[K, 4] = the gradient of G[K, C, crop_h, crop_w] w.r.t. the boxes (y1, x1,
    y2, x2), bilinear, in the reference's order (rows, columns, channels)."""
    _, H, W, C = X.shape
    T = rois.dtype.type
    for k in prange(G.shape[0]):
        n, rows, cols = box_axes(rois, k, H, W, crop_h, crop_w)
        g_y1 = g_x1 = g_y2 = g_x2 = T(0)
        for i in range(crop_h):
            y, dy1, dy2 = rows[i, 0], rows[i, 1], rows[i, 2]
            if not inside(y, H):
                continue
            top, bottom = math.floor(y), math.ceil(y)
            y_lerp = y - T(top)
            for j in range(crop_w):
                x, dx1, dx2 = cols[j, 0], cols[j, 1], cols[j, 2]
                if not inside(x, W):
                    continue
                left, right = math.floor(x), math.ceil(x)
                x_lerp = x - T(left)
                for c in range(C):
                    tl, tr = T(X[n, top, left, c]), T(X[n, top, right, c])
                    bl, br = T(X[n, bottom, left, c]), T(X[n, bottom, right, c])
                    g = T(G[k, c, i, j])
                    slope_y = ((T(1) - x_lerp) * (bl - tl) + x_lerp * (br - tr)) * g
                    slope_x = ((T(1) - y_lerp) * (tr - tl) + y_lerp * (br - bl)) * g
                    g_y1 += slope_y * dy1
                    g_y2 += slope_y * dy2
                    g_x1 += slope_x * dx1
                    g_x2 += slope_x * dx2
        grad_boxes[k, 0], grad_boxes[k, 1] = g_y1, g_x1
        grad_boxes[k, 2], grad_boxes[k, 3] = g_y2, g_x2
