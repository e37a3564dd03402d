"""RoIAlign, the executable spec: readable loops in NumPy, forward and backward.

Every fast kernel in roiops is tested against these functions. They follow the
definition of Mask R-CNN's RoIAlign with the conventions of torchvision/Detectron2
(which inherited them from Caffe2), stated where they are applied. Arithmetic is
done in the input's dtype ``T`` in the same order as torchvision, so that the
reference reproduces torchvision's float32 numbers, not only float64 ones.

Layout: ``input`` is ``[N, C, H, W]``, ``rois`` is ``[K, 5]`` rows of
``(batch_index, x1, y1, x2, y2)`` in input-image coordinates, the output is
``[K, C, pooled_height, pooled_width]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RoIAlignGeometry:
    """Where one RoI's bins and sampling points lie, in feature-map cells."""

    start_h: float
    start_w: float
    height: float
    width: float
    bin_size_h: float
    bin_size_w: float
    grid_h: int  # sampling points per bin along y
    grid_w: int  # sampling points per bin along x

    @property
    def count(self) -> int:
        # An empty sampling grid (adaptive sampling on a zero-size aligned RoI) yields 0,
        # not a division by zero: torchvision divides by max(count, 1).
        return max(self.grid_h * self.grid_w, 1)


def roi_geometry(
    box, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, dtype=np.float64
) -> RoIAlignGeometry:
    """Bins and sampling grid of one box ``(x1, y1, x2, y2)`` (image coordinates)."""
    T = np.dtype(dtype).type
    scale = T(spatial_scale)
    # aligned=True: a pixel's value lives at its centre, so continuous coordinate c maps
    # to c - 0.5 on the index grid (Detectron2's half-pixel fix). aligned=False keeps the
    # original Mask R-CNN mapping, which is off by half a cell.
    offset = T(0.5) if aligned else T(0.0)
    x1, y1, x2, y2 = (T(v) for v in box)
    start_w = x1 * scale - offset
    start_h = y1 * scale - offset
    end_w = x2 * scale - offset
    end_h = y2 * scale - offset
    width = end_w - start_w
    height = end_h - start_h
    if not aligned:
        # Legacy convention: a malformed (tiny or inverted) RoI is forced to 1x1 cell.
        width = max(width, T(1.0))
        height = max(height, T(1.0))
    bin_size_h = height / T(pooled_height)
    bin_size_w = width / T(pooled_width)
    # Adaptive sampling (sampling_ratio <= 0): ceil(bin size) points per bin and axis,
    # i.e. about one point per feature cell. An inverted aligned RoI gives a negative
    # size and therefore an empty grid.
    if sampling_ratio > 0:
        grid_h = grid_w = int(sampling_ratio)
    else:
        grid_h = max(int(math.ceil(height / T(pooled_height))), 0)
        grid_w = max(int(math.ceil(width / T(pooled_width))), 0)
    return RoIAlignGeometry(start_h, start_w, height, width, bin_size_h, bin_size_w, grid_h, grid_w)


def sample_coordinate(start, bin_size, bin_index, point_index, grid, dtype=np.float64):
    """Coordinate of the ``point_index``-th of ``grid`` regularly spaced points in a bin.

    The points sit at the centres of ``grid`` equal sub-cells: with 1 point it is the
    bin centre, with 2 per axis (4 in all) the centres of the bin's 2x2 quarters.
    """
    T = np.dtype(dtype).type
    return (start + T(bin_index) * bin_size) + T(point_index + 0.5) * bin_size / T(grid)


@dataclass(frozen=True)
class BilinearWeights:
    """The four neighbours of a sampling point and their bilinear weights."""

    y_low: int
    x_low: int
    y_high: int
    x_high: int
    w1: float  # (y_low, x_low)
    w2: float  # (y_low, x_high)
    w3: float  # (y_high, x_low)
    w4: float  # (y_high, x_high)

    def corners(self):
        return (
            (self.y_low, self.x_low, self.w1),
            (self.y_low, self.x_high, self.w2),
            (self.y_high, self.x_low, self.w3),
            (self.y_high, self.x_high, self.w4),
        )


def bilinear_weights(y, x, height, width, dtype=np.float64) -> BilinearWeights | None:
    """Bilinear interpolation weights at real-valued ``(y, x)``; None when it contributes 0.

    A point more than one cell outside the map (y < -1, y > H, x < -1, x > W) reads
    zero padding: it contributes nothing. Inside that band the point is clamped to the
    border, so the border value is replicated for the last half cell.
    """
    T = np.dtype(dtype).type
    y, x = T(y), T(x)
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
        return None
    y = max(y, T(0))
    x = max(x, T(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = T(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = T(x_low)
    else:
        x_high = x_low + 1
    ly = y - T(y_low)
    lx = x - T(x_low)
    hy = T(1) - ly
    hx = T(1) - lx
    return BilinearWeights(y_low, x_low, y_high, x_high, hy * hx, hy * lx, ly * hx, ly * lx)


def geometries(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, T):
    """``(k, n, RoIAlignGeometry)`` of every RoI: its index, its image, its geometry."""
    for k in range(rois.shape[0]):
        yield (
            k,
            int(rois[k, 0]),
            roi_geometry(
                rois[k, 1:5], spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, T
            ),
        )


def bin_samples(g: RoIAlignGeometry, ph, pw, height, width, T):
    """(sample_index, BilinearWeights or None) for every sampling point of bin (ph, pw)."""
    for iy in range(g.grid_h):
        y = sample_coordinate(g.start_h, g.bin_size_h, ph, iy, g.grid_h, T)
        for ix in range(g.grid_w):
            x = sample_coordinate(g.start_w, g.bin_size_w, pw, ix, g.grid_w, T)
            yield iy * g.grid_w + ix, bilinear_weights(y, x, height, width, T)


def interpolate(plane, bw: BilinearWeights | None, T):
    """The value of ``plane[H, W]`` at a sampling point (0 for a point outside)."""
    if bw is None:
        return T(0)
    # Summation order as in torchvision, so float32 results agree to the last bit.
    return (
        bw.w1 * plane[bw.y_low, bw.x_low]
        + bw.w2 * plane[bw.y_low, bw.x_high]
        + bw.w3 * plane[bw.y_high, bw.x_low]
        + bw.w4 * plane[bw.y_high, bw.x_high]
    )


def corner_terms(plane, bw: BilinearWeights | None, T):
    """The four weighted corner terms ``w_i * v_i`` of a sampling point, in the order
    (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high); all 0 for a point
    outside (ONNX RoiAlign's ``max`` mode compares these terms)."""
    if bw is None:
        return [T(0)] * 4
    return [w * plane[yy, xx] for yy, xx, w in bw.corners()]


def roi_align_forward(
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode="avg"
):
    """RoIAlign forward. Returns ``(output, argmax)``.

    ``mode="avg"``: mean of the bilinearly interpolated sampling points of each bin
    (samples outside the map count as 0 in the mean). ``argmax`` is None.
    ``mode="max"``: maximum over the sampling points (a point outside the map counts as
    value 0; the first maximum wins ties). ``argmax[k, c, ph, pw]`` is the winning
    sample's index ``iy * grid_w + ix``, or -1 for a bin with no sampling point, whose
    output is 0.
    ``mode="onnx_max"``: ONNX RoiAlign's ``max``: the maximum, over the sampling points
    and their four neighbours, of the weighted terms ``w_i * v_i`` (not of the
    interpolated values; a point outside the map contributes four zeros, as do the
    zero-weight corners of a point on a cell edge, so a bin's value is never below 0
    where any weight is 0). ``argmax`` is ``4 * sample + corner`` of the first maximum
    (corners ordered as ``corner_terms``), -1 for an empty grid.
    """
    T = input.dtype.type
    _, channels, height, width = input.shape
    K = rois.shape[0]
    output = np.zeros((K, channels, pooled_height, pooled_width), dtype=input.dtype)
    argmax = None
    if mode != "avg":
        argmax = np.full((K, channels, pooled_height, pooled_width), -1, dtype=np.int32)
    geoms = geometries(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, T)
    for k, n, g in geoms:
        for c in range(channels):
            plane = input[n, c]
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    samples = list(bin_samples(g, ph, pw, height, width, T))
                    if mode == "onnx_max":
                        values = [
                            (4 * s + i, term)
                            for s, bw in samples
                            for i, term in enumerate(corner_terms(plane, bw, T))
                        ]
                    else:
                        values = [(s, interpolate(plane, bw, T)) for s, bw in samples]
                    if mode == "avg":
                        acc = T(0)
                        for _, v in values:
                            acc += v
                        output[k, c, ph, pw] = acc / T(g.count)
                    elif values:
                        best_s, best_v = values[0]
                        for s, v in values[1:]:
                            if v > best_v:
                                best_s, best_v = s, v
                        output[k, c, ph, pw] = best_v
                        argmax[k, c, ph, pw] = best_s
    return output, argmax


def roi_align_backward(
    grad_output,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    sampling_ratio,
    aligned,
    input_shape,
    mode="avg",
    argmax=None,
):
    """Gradient w.r.t. the input, ``[N, C, H, W]``.

    Each sampling point at real-valued (y, x) passes the output's gradient to the (up
    to) four input cells around it, each scaled by its bilinear weight
    ``(1 - |dy|) * (1 - |dx|)``; in avg mode also divided by the number of points. In max
    mode only the winning point (``argmax``) passes gradient; in onnx_max mode only the
    winning corner of the winning point, with its weight. RoIs are visited in order,
    so the accumulation order, and therefore every bit of the result, is fixed.
    """
    T = grad_output.dtype.type
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    geoms = geometries(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, T)
    for k, n, g in geoms:
        for c in range(channels):
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    grad = grad_output[k, c, ph, pw]
                    for s, bw in bin_samples(g, ph, pw, height, width, T):
                        if bw is None:
                            continue
                        if mode == "avg":
                            share = grad / T(g.count)
                        elif mode == "max" and s == argmax[k, c, ph, pw]:
                            share = grad
                        elif mode == "onnx_max" and s == argmax[k, c, ph, pw] // 4:
                            yy, xx, w = bw.corners()[argmax[k, c, ph, pw] % 4]
                            grad_input[n, c, yy, xx] += grad * w
                            continue
                        else:
                            continue
                        for yy, xx, w in bw.corners():
                            grad_input[n, c, yy, xx] += share * w
    return grad_input


def value_slopes(plane, y, x, height, width, T):
    """(d value / dy, d value / dx) of the bilinear interpolation at (y, x): zero outside
    the map's one-cell band and where the point is clamped to the border (the value is
    flat there), else the slopes of the bilinear surface in the point's cell."""
    y, x = T(y), T(x)
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
        return T(0), T(0)
    bw = bilinear_weights(y, x, height, width, T)
    v1 = plane[bw.y_low, bw.x_low]
    v2 = plane[bw.y_low, bw.x_high]
    v3 = plane[bw.y_high, bw.x_low]
    v4 = plane[bw.y_high, bw.x_high]
    # the point's fractional position in its cell (0 where it is clamped to the end)
    flat_y = y <= 0 or bw.y_low == bw.y_high
    flat_x = x <= 0 or bw.x_low == bw.x_high
    ly = T(0) if bw.y_low == bw.y_high else max(y, T(0)) - T(bw.y_low)
    lx = T(0) if bw.x_low == bw.x_high else max(x, T(0)) - T(bw.x_low)
    dy = T(0) if flat_y else (T(1) - lx) * (v3 - v1) + lx * (v4 - v2)
    dx = T(0) if flat_x else (T(1) - ly) * (v2 - v1) + ly * (v4 - v3)
    return dy, dx


def roi_align_box_backward(
    grad_output,
    input,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    sampling_ratio,
    aligned,
    mode="avg",
    argmax=None,
):
    """Gradient w.r.t. the boxes, ``[K, 5]`` (column 0, the batch index, gets 0).

    A sampling point of bin ``ph`` sits at ``y = y1' + (ph + (iy + 0.5) / grid_h) * h' /
    PH`` with ``y1' = y1 * scale - offset`` and ``h' = (y2 - y1) * scale``, so it moves
    with the box edges by ``dy/dy1 = scale * (1 - t)``, ``dy/dy2 = scale * t``
    (``t = (ph + (iy + 0.5) / grid_h) / PH``); the gradient is the output gradient times
    the slope of the bilinear surface there (``value_slopes``) times those factors,
    summed over channels, bins and points (avg: divided by the count; max: the winning
    point only). Conventions: the sample count ``ceil(bin size)`` of adaptive sampling is
    piecewise constant in the box size and is held fixed (the gradient is that of the
    piece the box is in); a legacy (``aligned=False``) box forced to one cell has a
    fixed size, so only its start moves; the bilinear surface is piecewise linear, and at
    a cell edge the slope of the cell the point falls in (``floor``) is used.
    """
    T = input.dtype.type
    _, channels, height, width = input.shape
    grad_boxes = np.zeros((rois.shape[0], 5), dtype=input.dtype)
    scale = T(spatial_scale)
    for k, n, g in geometries(
        rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, T
    ):
        # legacy boxes under one cell are forced to 1x1: their size does not move
        moves_h = aligned or T(rois[k, 4]) * scale - T(rois[k, 2]) * scale > 1
        moves_w = aligned or T(rois[k, 3]) * scale - T(rois[k, 1]) * scale > 1
        gx1 = gy1 = gx2 = gy2 = T(0)
        for c in range(channels):
            plane = input[n, c]
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    grad = grad_output[k, c, ph, pw]
                    for iy in range(g.grid_h):
                        y = sample_coordinate(g.start_h, g.bin_size_h, ph, iy, g.grid_h, T)
                        t_y = (T(ph) + T(iy + 0.5) / T(g.grid_h)) / T(pooled_height)
                        for ix in range(g.grid_w):
                            s = iy * g.grid_w + ix
                            if mode == "avg":
                                share = grad / T(g.count)
                            elif s == argmax[k, c, ph, pw]:
                                share = grad
                            else:
                                continue
                            x = sample_coordinate(g.start_w, g.bin_size_w, pw, ix, g.grid_w, T)
                            t_x = (T(pw) + T(ix + 0.5) / T(g.grid_w)) / T(pooled_width)
                            dy, dx = value_slopes(plane, y, x, height, width, T)
                            gy = share * dy * scale
                            gx = share * dx * scale
                            gy1 += gy * (T(1) - t_y) if moves_h else gy
                            gy2 += gy * t_y if moves_h else T(0)
                            gx1 += gx * (T(1) - t_x) if moves_w else gx
                            gx2 += gx * t_x if moves_w else T(0)
        grad_boxes[k, 1:] = (gx1, gy1, gx2, gy2)
    return grad_boxes
