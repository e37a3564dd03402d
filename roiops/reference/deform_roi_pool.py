"""Deformable RoI pooling, the executable spec: loops in NumPy, forward and backward.

Deformable ConvNets (Dai et al. 2017) let a small head move every bin of a RoIAlign
by a learned offset. mmcv's ``DeformRoIPool`` (the one detection code calls) is
RoIAlign with ``aligned=True`` and average pooling, bin ``(ph, pw)`` of RoI k shifted
by a fraction of the RoI's size:

    start_w += gamma * roi_width  * offset[k, 0, ph, pw]
    start_h += gamma * roi_height * offset[k, 1, ph, pw]

(``roi_width``, ``roi_height``: the RoI's size in feature cells; the bin sizes and the
sampling grid stay the RoI's). With a zero offset it is ``roi_align(aligned=True)``
bit for bit. Arithmetic is in the input's dtype and in mmcv's order.

Gradients: to the input as RoIAlign's, at the shifted points; to the offsets, each
point's slope of the bilinear surface (``roi_align.value_slopes``) times ``gamma *
roi_width`` (x) or ``gamma * roi_height`` (y), averaged over the bin's points and
summed over channels and points. This is the derivative of the forward everywhere it
has one. mmcv's kernel differs within a cell of the map's border, where a point is
clamped into the map: it takes the slopes of the point's cell as if the point were not
clamped (not 0 along a clamped axis before the first row or column; 0 along the other
axis in the last row or column, whose cell is one cell wide), which are not its
forward's.

A bin whose offset is not finite outputs NaN (mmcv reads a cell at an undefined index)
and sends no gradient. The RoIs themselves get no gradient (as in mmcv).
"""

from __future__ import annotations

import numpy as np

from roiops.reference.roi_align import (
    bilinear_weights,
    geometries,
    interpolate,
    sample_coordinate,
    value_slopes,
)


def bin_start(g, offset_k, ph, pw, gamma, T):
    """(start_h, start_w) of bin (ph, pw)'s shifted RoI, or None where its offset
    ``offset_k[2, PH, PW]`` is not finite."""
    off_w, off_h = T(offset_k[0, ph, pw]), T(offset_k[1, ph, pw])
    if not (np.isfinite(off_w) and np.isfinite(off_h)):
        return None
    return g.start_h + T(gamma) * g.height * off_h, g.start_w + T(gamma) * g.width * off_w


def bin_points(g, start, ph, pw, T):
    """(y, x) of every sampling point of bin (ph, pw) of a RoI shifted to ``start``."""
    for iy in range(g.grid_h):
        y = sample_coordinate(start[0], g.bin_size_h, ph, iy, g.grid_h, T)
        for ix in range(g.grid_w):
            yield y, sample_coordinate(start[1], g.bin_size_w, pw, ix, g.grid_w, T)


def deform_roi_pool_forward(input, rois, offset, spatial_scale, pooled_height, pooled_width,
                            sampling_ratio, gamma):  # fmt: skip
    """``output[K, C, PH, PW]``: the mean of each shifted bin's sampling points.

    ``offset`` is ``[K, 2, PH, PW]``: (x, y) shifts in units of ``gamma`` times the RoI's
    width and height."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    output = np.zeros((rois.shape[0], channels, pooled_height, pooled_width), input.dtype)
    for k, n, g in geometries(rois, spatial_scale, pooled_height, pooled_width,
                              sampling_ratio, True, T):  # fmt: skip
        for ph in range(pooled_height):
            for pw in range(pooled_width):
                start = bin_start(g, offset[k], ph, pw, gamma, T)
                if start is None:
                    output[k, :, ph, pw] = np.nan
                    continue
                for c in range(channels):
                    acc = T(0)
                    for y, x in bin_points(g, start, ph, pw, T):
                        acc += interpolate(input[n, c], bilinear_weights(y, x, height, width, T), T)
                    output[k, c, ph, pw] = acc / T(g.count)
    return output


def deform_roi_pool_backward(grad_output, rois, offset, spatial_scale, pooled_height,
                             pooled_width, sampling_ratio, gamma, input_shape):  # fmt: skip
    """Gradient w.r.t. the input, ``[N, C, H, W]``: ``grad / count * w`` to each
    neighbour of each shifted point, RoIs in order, then channels, bins, points."""
    T = grad_output.dtype.type
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    for k, n, g in geometries(rois, spatial_scale, pooled_height, pooled_width,
                              sampling_ratio, True, T):  # fmt: skip
        for c in range(channels):
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    start = bin_start(g, offset[k], ph, pw, gamma, T)
                    if start is None:
                        continue
                    share = grad_output[k, c, ph, pw] / T(g.count)
                    for y, x in bin_points(g, start, ph, pw, T):
                        bw = bilinear_weights(y, x, height, width, T)
                        if bw is None:
                            continue
                        for yy, xx, w in bw.corners():
                            grad_input[n, c, yy, xx] += share * w
    return grad_input


def deform_roi_pool_offset_backward(grad_output, input, rois, offset, spatial_scale,
                                    pooled_height, pooled_width, sampling_ratio,
                                    gamma):  # fmt: skip
    """Gradient w.r.t. the offsets, ``[K, 2, PH, PW]``: per bin and channel, the sum over
    the points of ``grad / count`` times the slope of the bilinear surface at the point;
    those summed over channels in order; then times ``gamma * roi_width`` (x) and
    ``gamma * roi_height`` (y)."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    grad_offset = np.zeros((rois.shape[0], 2, pooled_height, pooled_width), input.dtype)
    for k, n, g in geometries(rois, spatial_scale, pooled_height, pooled_width,
                              sampling_ratio, True, T):  # fmt: skip
        for ph in range(pooled_height):
            for pw in range(pooled_width):
                start = bin_start(g, offset[k], ph, pw, gamma, T)
                if start is None:
                    continue
                gx = gy = T(0)
                for c in range(channels):
                    share = T(grad_output[k, c, ph, pw]) / T(g.count)
                    cx = cy = T(0)
                    for y, x in bin_points(g, start, ph, pw, T):
                        dy, dx = value_slopes(input[n, c], y, x, height, width, T)
                        cx += share * dx
                        cy += share * dy
                    gx += cx
                    gy += cy
                grad_offset[k, 0, ph, pw] = gx * (T(gamma) * g.width)
                grad_offset[k, 1, ph, pw] = gy * (T(gamma) * g.height)
    return grad_offset
