"""Precise RoI Pooling on CPU: Numba kernels, forward, input and box gradients.

Formula for formula ``roiops.reference.prroi_pool`` (zero-padded bilinear interpolant,
exact integrals per unit cell). NCHW input and gradient: a bin's integral reads, and
its gradient writes, one plane. Forward and box gradient: one task per RoI (its own
outputs and row). Input gradient: one task per (image, block of channels) visiting the
image's RoIs in input order, the only writer of its planes: bitwise reproducible.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.parallel import parallel_njit


@njit(cache=True)
def _value(plane, h, w):
    if h < 0 or w < 0 or h >= plane.shape[0] or w >= plane.shape[1]:
        return plane.dtype.type(0)
    return plane[h, w]


@njit(cache=True)
def cell_range(lo, hi, size, T):
    """``(first, end)``: the unit cells ``[c, c + 1)`` that meet ``[lo, hi]`` along an axis
    of ``size`` cells, those from -1 to size - 1 only (``roiops.reference.prroi_pool.
    cell_range``)."""
    first = math.floor(min(max(lo, T(-1)), T(size)))
    return first, math.ceil(max(min(hi, T(size)), T(-1)))


@njit(cache=True)
def _ramp(lo, hi, T):
    """int_lo^hi (1 - a) da."""
    return hi - T(0.5) * hi * hi - lo + T(0.5) * lo * lo


@njit(cache=True)
def _corner_coefficients(h, w, y0, x0, y1, x1, T):
    """The four corners' coefficients (h, w), (h, w + 1), (h + 1, w), (h + 1, w + 1)."""
    a0 = _ramp(x0 - T(w), x1 - T(w), T)
    a1 = _ramp(T(w + 1) - x1, T(w + 1) - x0, T)
    b0 = _ramp(y0 - T(h), y1 - T(h), T)
    b1 = _ramp(T(h + 1) - y1, T(h + 1) - y0, T)
    return a0 * b0, a1 * b0, a0 * b1, a1 * b1


@njit(cache=True)
def _window(rois, k, spatial_scale, pooled_h, pooled_w, ph, pw):
    """(y0, x0, y1, x1, area) of bin (ph, pw) of RoI k."""
    T = rois.dtype.type
    scale = T(spatial_scale)
    x1, y1 = rois[k, 1] * scale, rois[k, 2] * scale
    x2, y2 = rois[k, 3] * scale, rois[k, 4] * scale
    bin_h = max(y2 - y1, T(0)) / T(pooled_h)
    bin_w = max(x2 - x1, T(0)) / T(pooled_w)
    start_w = x1 + bin_w * T(pw)
    start_h = y1 + bin_h * T(ph)
    return start_h, start_w, start_h + bin_h, start_w + bin_w, max(T(0), bin_w * bin_h)


@njit(cache=True)
def _integral(plane, y0, x0, y1, x1, T):
    """The window's integral of the zero-padded interpolant, cell by cell."""
    total = T(0)
    H, W = plane.shape
    for w in range(*cell_range(x0, x1, W, T)):
        for h in range(*cell_range(y0, y1, H, T)):
            cy0, cx0 = max(y0, T(h)), max(x0, T(w))
            cy1, cx1 = min(y1, T(h + 1)), min(x1, T(w + 1))
            c1, c2, c3, c4 = _corner_coefficients(h, w, cy0, cx0, cy1, cx1, T)
            cell = _value(plane, h, w) * c1
            cell += _value(plane, h, w + 1) * c2
            cell += _value(plane, h + 1, w) * c3
            cell += _value(plane, h + 1, w + 1) * c4
            total += cell
    return total


@parallel_njit
def prroi_pool_forward(X, rois, spatial_scale, pooled_h, pooled_w, out):
    """out[K, C, pooled_h, pooled_w] from X[N, C, H, W]."""
    K, C = out.shape[0], out.shape[1]
    T = X.dtype.type
    for k in prange(K):
        n = int(rois[k, 0])
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                y0, x0, y1, x1, area = _window(rois, k, spatial_scale, pooled_h, pooled_w, ph, pw)
                for c in range(C):
                    if area == 0:
                        out[k, c, ph, pw] = 0
                    else:
                        out[k, c, ph, pw] = _integral(X[n, c], y0, x0, y1, x1, T) / area


@parallel_njit
def prroi_pool_backward(G, rois, order, image_start, spatial_scale, pooled_h, pooled_w,
                        channel_block, GX):  # fmt: skip
    """GX[N, C, H, W] (uninitialised: each task zeroes its planes) = the input gradient."""
    N, C, H, W = GX.shape
    T = GX.dtype.type
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        GX[n, c0:c1] = 0
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    y0, x0, y1, x1, area = _window(
                        rois, k, spatial_scale, pooled_h, pooled_w, ph, pw
                    )
                    if area == 0:
                        continue
                    for c in range(c0, c1):
                        share = G[k, c, ph, pw] / area
                        plane = GX[n, c]
                        for w in range(*cell_range(x0, x1, W, T)):
                            for h in range(*cell_range(y0, y1, H, T)):
                                cy0, cx0 = max(y0, T(h)), max(x0, T(w))
                                cy1, cx1 = min(y1, T(h + 1)), min(x1, T(w + 1))
                                co = _corner_coefficients(h, w, cy0, cx0, cy1, cx1, T)
                                for i in range(4):
                                    hh = h + i // 2
                                    ww = w + i % 2
                                    if 0 <= hh < H and 0 <= ww < W:
                                        plane[hh, ww] += share * co[i]


@njit(cache=True)
def _interpolate(plane, y, x, T):
    """The zero-padded bilinear interpolant at (y, x)."""
    total = T(0)
    fy, fx = math.floor(y), math.floor(x)
    for h in (fy, fy + 1):
        for w in (fx, fx + 1):
            total += _value(plane, h, w) * ((T(1) - abs(y - T(h))) * (T(1) - abs(x - T(w))))
    return total


@njit(cache=True)
def _edge(s, t, c1, c2, T):
    """int_s^t of the linear interpolation from c1 (at 0) to c2 (at 1)."""
    return T(0.5) * (t * t - s * s) * c2 + (t - T(0.5) * t * t - s + T(0.5) * s * s) * c1


@parallel_njit
def prroi_pool_box_backward(G, X, rois, out, spatial_scale, pooled_h, pooled_w, grad_boxes):
    """grad_boxes[K, 5] (column 0 is 0) from the forward ``out``: one task per RoI."""
    K, C = out.shape[0], out.shape[1]
    T = X.dtype.type
    scale = T(spatial_scale)
    for k in prange(K):
        n = int(rois[k, 0])
        gb = np.zeros(5, X.dtype)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                y0, x0, y1, x1, area = _window(rois, k, spatial_scale, pooled_h, pooled_w, ph, pw)
                if area == 0:
                    continue
                for c in range(C):
                    plane = X[n, c]
                    g = G[k, c, ph, pw]
                    if g / area == 0:
                        continue
                    value = out[k, c, ph, pw]
                    g_x1 = g_x2 = g_y1 = g_y2 = T(0)
                    for h in range(*cell_range(y0, y1, plane.shape[0], T)):
                        s, t = max(y0, T(h)) - T(h), min(y1, T(h + 1)) - T(h)
                        g_x1 += _edge(s, t, _interpolate(plane, T(h), x0, T),
                                      _interpolate(plane, T(h + 1), x0, T), T)  # fmt: skip
                        g_x2 += _edge(s, t, _interpolate(plane, T(h), x1, T),
                                      _interpolate(plane, T(h + 1), x1, T), T)  # fmt: skip
                    for w in range(*cell_range(x0, x1, plane.shape[1], T)):
                        s, t = max(x0, T(w)) - T(w), min(x1, T(w + 1)) - T(w)
                        g_y1 += _edge(s, t, _interpolate(plane, y0, T(w), T),
                                      _interpolate(plane, y0, T(w + 1), T), T)  # fmt: skip
                        g_y2 += _edge(s, t, _interpolate(plane, y1, T(w), T),
                                      _interpolate(plane, y1, T(w + 1), T), T)  # fmt: skip
                    d_x1 = (-g_x1 + (y1 - y0) * value) / area * scale
                    d_y1 = (-g_y1 + (x1 - x0) * value) / area * scale
                    d_x2 = (g_x2 - (y1 - y0) * value) / area * scale
                    d_y2 = (g_y2 - (x1 - x0) * value) / area * scale
                    t0_w, t1_w = T(pw) / T(pooled_w), T(pw + 1) / T(pooled_w)
                    t0_h, t1_h = T(ph) / T(pooled_h), T(ph + 1) / T(pooled_h)
                    gb[1] += (d_x1 * (T(1) - t0_w) + d_x2 * (T(1) - t1_w)) * g
                    gb[2] += (d_y1 * (T(1) - t0_h) + d_y2 * (T(1) - t1_h)) * g
                    gb[3] += (d_x2 * t1_w + d_x1 * t0_w) * g
                    gb[4] += (d_y2 * t1_h + d_y1 * t0_h) * g
        for i in range(5):  # (not ``grad_boxes[k] = gb``: see ps_roi_pool.bin_tables)
            grad_boxes[k, i] = gb[i]
