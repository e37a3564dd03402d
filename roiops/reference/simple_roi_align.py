"""SimpleRoIAlign (PointRend's; mmcv's ``SimpleRoIAlign``), the executable spec: loops in
NumPy, forward and backward.

PointRend (Kirillov et al., CVPR 2020) pools a RoI's coarse features with one bilinear
sample at the centre of each bin, read as ``torch.nn.functional.grid_sample`` reads a
map with zero padding: the point's four neighbouring cells, each weighted by its
bilinear weight, a neighbour outside the map counting 0. RoIAlign's sample differs
within a cell of the map's edge only, where it moves the point onto the edge (the edge
cell counts in full).

Bin ``(ph, pw)`` of RoI ``(x1, y1, x2, y2)`` samples the image point

    x = x1 + (pw + 0.5) / PW * (x2 - x1),    y = y1 + (ph + 0.5) / PH * (y2 - y1)

at the feature-map point (W, H: the map's width and height)

    aligned=True:   (x * spatial_scale - 0.5, y * spatial_scale - 0.5)
    aligned=False:  (x * spatial_scale * (W - 1) / W, y * spatial_scale * (H - 1) / H)

(mmcv: grid_sample of the points normalised by the map's size, with ``align_corners =
not aligned``), in the boxes' dtype, in that order. A point with a neighbour in the map
lies strictly within a cell of it, ``-1 < v < size`` along each axis; elsewhere the bin
is 0. Corners are summed in grid_sample's order: (low row, low column), (low, high),
(high, low), (high, high).

Backward: each neighbour in the map receives the output's gradient times its weight;
the RoIs get no gradient (mmcv computes the points without one).
"""

from __future__ import annotations

import math

import numpy as np


def sample_point(roi, ph, pw, pooled_height, pooled_width, spatial_scale, aligned, height,
                 width, T):  # fmt: skip
    """(y, x): bin (ph, pw)'s sampling point on the map, in dtype T."""
    x1, y1, x2, y2 = (T(v) for v in roi)
    u = T(pw + 0.5) / T(pooled_width)
    v = T(ph + 0.5) / T(pooled_height)
    x = x1 + u * (x2 - x1)
    y = y1 + v * (y2 - y1)
    scale = T(spatial_scale)
    if aligned:
        return y * scale - T(0.5), x * scale - T(0.5)
    return y * scale * T(height - 1) / T(height), x * scale * T(width - 1) / T(width)


def axis_neighbours(v, limit, T) -> list[tuple[int, object]]:
    """``[(cell, weight), ...]``: the cells ``floor(v)`` and ``floor(v) + 1`` with weights
    ``1 - f`` and ``f`` (``f = v - floor(v)``), those outside ``[0, limit)`` left out;
    none where v is not strictly within a cell of the map (NaN included)."""
    if not (v > -1 and v < limit):
        return []
    low = math.floor(v)
    f = T(v - T(low))
    cells = [(low, T(1) - f), (low + 1, f)]
    return [(cell, w) for cell, w in cells if 0 <= cell < limit]


def bin_corners(roi, ph, pw, pooled_height, pooled_width, spatial_scale, aligned, height,
                width, T):  # fmt: skip
    """``[(row, column, weight), ...]`` of bin (ph, pw): its point's neighbours in the map,
    in grid_sample's order, each weighted by its row weight times its column weight."""
    y, x = sample_point(roi, ph, pw, pooled_height, pooled_width, spatial_scale, aligned,
                        height, width, T)  # fmt: skip
    rows = axis_neighbours(y, height, T)
    cols = axis_neighbours(x, width, T)
    return [(r, c, wy * wx) for r, wy in rows for c, wx in cols]


def simple_roi_align_forward(input, rois, spatial_scale, pooled_height, pooled_width, aligned):
    """``out[K, C, pooled_height, pooled_width]`` for ``input[N, C, H, W]``, ``rois[K, 5]``."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    K = rois.shape[0]
    out = np.zeros((K, channels, pooled_height, pooled_width), input.dtype)
    for k in range(K):
        n = int(rois[k, 0])
        for ph in range(pooled_height):
            for pw in range(pooled_width):
                corners = bin_corners(rois[k, 1:5], ph, pw, pooled_height, pooled_width,
                                      spatial_scale, aligned, height, width, T)  # fmt: skip
                for c in range(channels):
                    value = T(0)
                    for r, col, w in corners:
                        value = value + w * input[n, c, r, col]
                    out[k, c, ph, pw] = value
    return out


def simple_roi_align_backward(grad, rois, spatial_scale, pooled_height, pooled_width, aligned,
                              input_shape):  # fmt: skip
    """Gradient w.r.t. the input: RoIs in order, bins in order, each bin's corners in
    order, ``grad * weight`` added to each."""
    T = grad.dtype.type
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, grad.dtype)
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        for ph in range(pooled_height):
            for pw in range(pooled_width):
                corners = bin_corners(rois[k, 1:5], ph, pw, pooled_height, pooled_width,
                                      spatial_scale, aligned, height, width, T)  # fmt: skip
                for c in range(channels):
                    for r, col, w in corners:
                        grad_input[n, c, r, col] += grad[k, c, ph, pw] * w
    return grad_input
