"""Deformable position-sensitive RoI pooling, the executable spec: loops in NumPy, forward
and backward.

Deformable ConvNets' RoI pooling as its authors wrote it (Dai et al. 2017, the MXNet
``DeformablePSROIPooling``), which Deformable R-FCN, mmdetection 1.x's
``DeformRoIPooling`` and Charles Shang's DCNv2 ``dcn_v2_pooling`` run (one kernel, the
same numbers). Not mmcv 2's ``DeformRoIPool`` (``roiops.reference.deform_roi_pool``:
RoIAlign's grid, shifted). For RoI k:

1. its corners are rounded to whole image pixels (half away from zero) and scaled, the
   end one pixel further: ``start = round(x1) * s - 0.5``, ``end = (round(x2) + 1) * s -
   0.5``; its size ``end - start``, at least 0.1 cell;
2. bin (ph, pw) is a ``PH x PW``th of it; it takes ``S x S`` points (``S =
   sample_per_part``), the first at the bin's corner (not a sub-cell's centre), spaced
   a ``S``th of the bin;
3. the bin moves by its *part*'s offset (``part_size`` parts an axis, bin ph in part
   ``floor(ph / PH * part_size)``, divided in the dtype): ``trans_std * (x, y) *
   (roi_width, roi_height)``, with ``offset[k, 2 * j, part_h, part_w]`` (x) and ``[k, 2
   * j + 1, ...]`` (y), ``j`` the output channel's class: the output channels are split
   into ``offset.shape[1] / 2`` classes in order (one class: every channel, the common
   case); no ``offset``: no move;
4. output channel c of bin (ph, pw) reads input channel ``(c * G + gh) * G + gw``
   (``G = group_size``; ``gh = floor(ph * G / PH)``): position-sensitive where ``G =
   PH = PW`` (R-FCN), plain where ``G = 1``;
5. a point past the map by more than half a cell (``x < -0.5`` or ``x > W - 0.5``) is
   left out; the others are clamped into ``[0, W - 1]`` and read bilinearly between
   ``floor(x)`` and ``ceil(x)``; the output is the mean of the points kept (0 where
   none is).

All arithmetic is in the RoIs' dtype, in the original kernel's order (without its
compiled multiply-adds). Gradients: to the input, each kept point's bilinear shares
of ``grad / count``; to the offsets, each kept point's slope of its bilinear cell (in x:
``(1 - dy) * (v(y0, x1) - v(y0, x0)) + dy * (v(y1, x1) - v(y1, x0))``) times ``grad /
count``, summed per bin over its points, then over the channels of the offset's class,
times ``trans_std * roi_width`` (x) or ``roi_height`` (y), and added up over the
part's bins in order. As in the original, a point on a whole cell (``floor(x) ==
ceil(x)``, which includes every point clamped to the map's edge) has slope 0 along that
axis: there the surface has a kink, no derivative. A bin whose offset is not finite
outputs NaN and sends no gradient (the original reads a cell picked by its NaN
comparisons). The RoIs get no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from roiops.reference.roi_pool import round_half_away


@dataclass(frozen=True)
class Geometry:
    """A RoI in feature cells: its corner, size, bins and the spacing of their points."""

    start_h: float
    start_w: float
    height: float
    width: float
    bin_h: float
    bin_w: float
    step_h: float
    step_w: float


def geometry(box, spatial_scale, pooled_height, pooled_width, sample_per_part, T) -> Geometry:
    """Box ``(x1, y1, x2, y2)`` in image pixels -> its ``Geometry`` (steps 1 and 2)."""
    s = T(spatial_scale)
    start_w = T(round_half_away(box[0])) * s - T(0.5)
    start_h = T(round_half_away(box[1])) * s - T(0.5)
    end_w = (T(round_half_away(box[2])) + T(1)) * s - T(0.5)
    end_h = (T(round_half_away(box[3])) + T(1)) * s - T(0.5)
    width = max(end_w - start_w, T(0.1))
    height = max(end_h - start_h, T(0.1))
    bin_w = width / T(pooled_width)
    bin_h = height / T(pooled_height)
    step_w = bin_w / T(sample_per_part)
    step_h = bin_h / T(sample_per_part)
    return Geometry(start_h, start_w, height, width, bin_h, bin_w, step_h, step_w)


def part_index(index, pooled, part_size, T) -> int:
    """The part of bin ``index`` along an axis: ``floor(index / pooled * part_size)`` in
    the dtype (so 5 of 6 is part 4 of 6 in float32, 5 in float64), within the parts."""
    return min(int(math.floor(T(T(index) / T(pooled)) * T(part_size))), part_size - 1)


def group_index(index, pooled, group_size) -> int:
    """The position-sensitive group of bin ``index`` along an axis: ``floor(index *
    group_size / pooled)`` (a whole-number quotient: exact in any dtype)."""
    return min(index * group_size // pooled, group_size - 1)


def bin_shift(offset_k, num_classes, cls, part_h, part_w, trans_std, T):
    """(dy, dx) in units of the RoI's size of a bin of class ``cls`` in part (part_h,
    part_w), or None where its offset is not finite; (0, 0) without offsets."""
    if num_classes == 0:
        return T(0), T(0)
    off_w = T(offset_k[2 * cls, part_h, part_w])
    off_h = T(offset_k[2 * cls + 1, part_h, part_w])
    if not (np.isfinite(off_w) and np.isfinite(off_h)):
        return None
    return off_h * T(trans_std), off_w * T(trans_std)


def bin_points(g, ph, pw, shift, sample_per_part, height, width, T):
    """The kept points of bin (ph, pw) shifted by ``shift``: ``(y, x)`` clamped into the
    map (step 5), in row-major order."""
    h_start = T(ph) * g.bin_h + g.start_h
    h_start = h_start + shift[0] * g.height
    w_start = T(pw) * g.bin_w + g.start_w
    w_start = w_start + shift[1] * g.width
    points = []
    for ih in range(sample_per_part):
        for iw in range(sample_per_part):
            x = w_start + T(iw) * g.step_w
            y = h_start + T(ih) * g.step_h
            if x < T(-0.5) or x > T(width) - T(0.5) or y < T(-0.5) or y > T(height) - T(0.5):
                continue
            x = min(max(x, T(0)), T(width - 1))
            y = min(max(y, T(0)), T(height - 1))
            points.append((y, x))
    return points


def corners(y, x, T):
    """((y0, x0), (y1, x0), (y0, x1), (y1, x1)), their weights and (dy, dx): the cell of
    point (y, x) between ``floor`` and ``ceil`` (one row or column where it is whole)."""
    y0, x0 = math.floor(y), math.floor(x)
    y1, x1 = math.ceil(y), math.ceil(x)
    dy, dx = y - T(y0), x - T(x0)
    cells = ((y0, x0), (y1, x0), (y0, x1), (y1, x1))
    weights = ((T(1) - dx) * (T(1) - dy), (T(1) - dx) * dy, dx * (T(1) - dy), dx * dy)
    return cells, weights, dy, dx


def _bins(rois, offset, spatial_scale, pooled_height, pooled_width, sample_per_part,
          group_size, part_size, trans_std, channels_out, height, width, T):  # fmt: skip
    """(k, n, g, c, ph, pw, c_in, points, part, cls) of every (RoI, output channel, bin)
    in that order, with its input channel, its kept points (None: its offset is not
    finite), its part and its offset's class."""
    num_classes = offset.shape[1] // 2
    per_class = channels_out // max(num_classes, 1)
    for k in range(rois.shape[0]):
        g = geometry(rois[k, 1:5], spatial_scale, pooled_height, pooled_width,
                     sample_per_part, T)  # fmt: skip
        for c in range(channels_out):
            cls = c // per_class
            for ph in range(pooled_height):
                part_h = part_index(ph, pooled_height, part_size, T)
                gh = group_index(ph, pooled_height, group_size)
                for pw in range(pooled_width):
                    part_w = part_index(pw, pooled_width, part_size, T)
                    gw = group_index(pw, pooled_width, group_size)
                    shift = bin_shift(offset[k], num_classes, cls, part_h, part_w, trans_std, T)
                    points = None
                    if shift is not None:
                        points = bin_points(g, ph, pw, shift, sample_per_part, height, width, T)
                    c_in = (c * group_size + gh) * group_size + gw
                    yield k, int(rois[k, 0]), g, c, ph, pw, c_in, points, (part_h, part_w), cls


def output_channels(channels: int, group_size: int) -> int:
    return channels // (group_size * group_size)


def deform_ps_roi_pool_forward(input, rois, offset, spatial_scale, pooled_height, pooled_width,
                               sample_per_part, group_size, part_size, trans_std):  # fmt: skip
    """``output[K, C / group_size**2, PH, PW]``: each bin's mean over its kept points.
    ``offset`` is ``[K, 2 * classes, part_size, part_size]`` (``classes`` 0: none)."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    channels_out = output_channels(channels, group_size)
    output = np.zeros((rois.shape[0], channels_out, pooled_height, pooled_width), input.dtype)
    for k, n, _, c, ph, pw, c_in, points, _, _ in _bins(
        rois, offset, spatial_scale, pooled_height, pooled_width, sample_per_part, group_size,
        part_size, trans_std, channels_out, height, width, T,
    ):  # fmt: skip
        if points is None:
            output[k, c, ph, pw] = np.nan
            continue
        total = T(0)
        for y, x in points:
            cells, weights, _, _ = corners(y, x, T)
            value = weights[0] * input[n, c_in, cells[0][0], cells[0][1]]
            for (yy, xx), w in zip(cells[1:], weights[1:], strict=True):
                value = value + w * input[n, c_in, yy, xx]
            total += value
        output[k, c, ph, pw] = total / T(len(points)) if points else T(0)
    return output


def deform_ps_roi_pool_backward(grad_output, rois, offset, spatial_scale, pooled_height,
                                pooled_width, sample_per_part, group_size, part_size,
                                trans_std, input_shape):  # fmt: skip
    """Gradient w.r.t. the input, ``[N, C, H, W]``: ``grad / count`` times each corner's
    weight, RoIs in order, then output channels, bins, points, corners."""
    T = grad_output.dtype.type
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    for k, n, _, c, ph, pw, c_in, points, _, _ in _bins(
        rois, offset, spatial_scale, pooled_height, pooled_width, sample_per_part, group_size,
        part_size, trans_std, grad_output.shape[1], height, width, T,
    ):  # fmt: skip
        if not points:
            continue
        share = grad_output[k, c, ph, pw] / T(len(points))
        for y, x in points:
            cells, weights, _, _ = corners(y, x, T)
            for (yy, xx), w in zip(cells, weights, strict=True):
                grad_input[n, c_in, yy, xx] += w * share
    return grad_input


def deform_ps_roi_pool_offset_backward(grad_output, input, rois, offset, spatial_scale,
                                       pooled_height, pooled_width, sample_per_part,
                                       group_size, part_size, trans_std):  # fmt: skip
    """Gradient w.r.t. the offsets, ``offset``'s shape: per (RoI, bin), each output
    channel's sum over the kept points of its slope times ``grad / count``; those summed
    over the channels of each class in order, times ``trans_std * roi_width`` (x) and
    ``trans_std * roi_height`` (y); added to the bin's part, bins in row-major order."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    grad_offset = np.zeros(offset.shape, input.dtype)
    num_classes = offset.shape[1] // 2
    if num_classes == 0:
        return grad_offset
    # (k, ph, pw) -> per class: the sums over its channels, each channel's over its points
    sums: dict[tuple, list] = {}
    geometries = {}
    parts = {}
    for k, n, g, c, ph, pw, c_in, points, part, cls in _bins(
        rois, offset, spatial_scale, pooled_height, pooled_width, sample_per_part, group_size,
        part_size, trans_std, grad_output.shape[1], height, width, T,
    ):  # fmt: skip
        geometries[k] = g
        parts[(k, ph, pw)] = part
        bin_sums = sums.setdefault((k, ph, pw), [[T(0), T(0)] for _ in range(num_classes)])
        if not points:
            continue
        share = T(grad_output[k, c, ph, pw]) / T(len(points))
        gx = gy = T(0)
        for y, x in points:
            (c00, c10, c01, c11), _, dy, dx = corners(y, x, T)
            v00 = input[n, c_in, c00[0], c00[1]]
            v10 = input[n, c_in, c10[0], c10[1]]  # (y1, x0)
            v01 = input[n, c_in, c01[0], c01[1]]  # (y0, x1)
            v11 = input[n, c_in, c11[0], c11[1]]
            slope_x = v11 * dy + v01 * (T(1) - dy) - v10 * dy - v00 * (T(1) - dy)
            slope_y = v11 * dx + v10 * (T(1) - dx) - v01 * dx - v00 * (T(1) - dx)
            gx += slope_x * share
            gy += slope_y * share
        bin_sums[cls][0] += gx
        bin_sums[cls][1] += gy
    for (k, ph, pw), per_class in sums.items():
        g = geometries[k]
        part_h, part_w = parts[(k, ph, pw)]
        for cls, (gx, gy) in enumerate(per_class):
            grad_offset[k, 2 * cls, part_h, part_w] += gx * (T(trans_std) * g.width)
            grad_offset[k, 2 * cls + 1, part_h, part_w] += gy * (T(trans_std) * g.height)
    return grad_offset
