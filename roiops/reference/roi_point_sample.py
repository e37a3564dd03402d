"""Point sampling in RoIs (PointRend's fine-grained features; mmcv's ``point_sample`` of
``rel_roi_point_to_rel_img_point``), the executable spec: loops in NumPy, forward and
backward. ``roiops.simple_roi_align`` is this at the bins' centres.

PointRend (Kirillov et al., CVPR 2020) reads a RoI's features at points given relative
to the RoI, one bilinear sample each, as ``torch.nn.functional.grid_sample`` reads a map
with zero padding: the point's four neighbouring cells, each weighted by its bilinear
weight, a neighbour outside the map counting 0. RoIAlign's sample differs within a cell
of the map's edge only, where it moves the point onto the edge (the edge cell counts in
full).

Point ``(u, v)`` of RoI ``(x1, y1, x2, y2)`` is the image point

    x = x1 + u * (x2 - x1),    y = y1 + v * (y2 - y1)

(``u, v`` in [0, 1] inside the box, any value allowed; ``points[K, P, 2]`` give each RoI
its own, ``points[1, P, 2]`` every RoI the same), sampled at the feature-map point
(W, H: the map's width and height)

    aligned=True:   (x * spatial_scale - 0.5, y * spatial_scale - 0.5)
    aligned=False:  (x * spatial_scale * (W - 1) / W, y * spatial_scale * (H - 1) / H)

(mmcv: grid_sample of the points normalised by the map's size, with ``align_corners =
not aligned``), in the boxes' dtype, in that order. A point with a neighbour in the map
lies strictly within a cell of it, ``-1 < v < size`` along each axis; elsewhere it reads
0. Corners are summed in grid_sample's order: (low row, low column), (low, high),
(high, low), (high, high).

Backward: each neighbour in the map receives the output's gradient times its weight;
the RoIs and the points get no gradient (mmcv computes the points without one).
"""

from __future__ import annotations

import math

import numpy as np


def map_point(roi, u, v, spatial_scale, aligned, height, width, T):
    """(y, x): the point (u, v) of ``roi`` (x1, y1, x2, y2) on the map, in dtype T."""
    x1, y1, x2, y2 = (T(c) for c in roi)
    x = x1 + T(u) * (x2 - x1)
    y = y1 + T(v) * (y2 - y1)
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


def point_corners(roi, u, v, spatial_scale, aligned, height, width, T):
    """``[(row, column, weight), ...]`` of point (u, v): its neighbours in the map, in
    grid_sample's order, each weighted by its row weight times its column weight."""
    y, x = map_point(roi, u, v, spatial_scale, aligned, height, width, T)
    rows = axis_neighbours(y, height, T)
    cols = axis_neighbours(x, width, T)
    return [(r, c, wy * wx) for r, wy in rows for c, wx in cols]


def roi_point_sample_forward(input, rois, points, spatial_scale, aligned):
    """``out[K, C, P]`` for ``input[N, C, H, W]``, ``rois[K, 5]``, ``points[K, P, 2]``."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    K, P = rois.shape[0], points.shape[1]
    out = np.zeros((K, channels, P), input.dtype)
    for k in range(K):
        n = int(rois[k, 0])
        for p in range(P):
            u, v = points[k if points.shape[0] > 1 else 0, p]
            corners = point_corners(rois[k, 1:5], u, v, spatial_scale, aligned, height, width,
                                    T)  # fmt: skip
            for c in range(channels):
                value = T(0)
                for r, col, w in corners:
                    value = value + w * input[n, c, r, col]
                out[k, c, p] = value
    return out


def roi_point_sample_backward(grad, rois, points, spatial_scale, aligned, input_shape):
    """Gradient w.r.t. the input: RoIs in order, points in order, each point's corners in
    order, ``grad * weight`` added to each."""
    T = grad.dtype.type
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, grad.dtype)
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        for p in range(points.shape[1]):
            u, v = points[k if points.shape[0] > 1 else 0, p]
            corners = point_corners(rois[k, 1:5], u, v, spatial_scale, aligned, height, width,
                                    T)  # fmt: skip
            for c in range(channels):
                for r, col, w in corners:
                    grad_input[n, c, r, col] += grad[k, c, p] * w
    return grad_input
