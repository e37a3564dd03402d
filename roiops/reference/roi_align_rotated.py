"""Rotated RoIAlign, the executable spec: loops in NumPy, forward and backward.

A rotated box is ``(batch_index, cx, cy, w, h, angle)`` in image coordinates. Its bins
and sampling points are RoIAlign's, laid out in the box's own frame (centred on the box,
from ``-h / 2`` to ``h / 2`` and ``-w / 2`` to ``w / 2``), then rotated by the angle
about the centre and moved to it:

    y = yy * cos(theta) - xx * sin(theta) + cy',    x = yy * sin(theta) + xx * cos(theta) + cx'

with ``cx' = cx * spatial_scale - offset`` (likewise cy'). Each point is read by
bilinear interpolation (``roiops.reference.roi_align.bilinear_weights``) and a bin
averages its points.

Conventions, selectable:

* detectron2 (default): ``angle`` in degrees, counter-clockwise (as seen in the image,
  y down: the rotation above), half-pixel ``offset = 0.5`` (``aligned=True``); a box
  with a negative size is an error.
* mmcv: ``angle`` in radians; ``clockwise=True`` negates it; ``aligned=False`` uses no
  offset and forces boxes smaller than a cell to 1x1.

Arithmetic is in the input's dtype and in detectron2's order (its ``theta`` is the
angle times pi / 180 in double precision; the backward multiplies by the weight, then
divides by the point count), except that cos and sin are taken in float64 and rounded.
At angle 0 the points are those of ``roi_align`` with ``aligned=True`` of the box
``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``, up to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from roiops.reference.roi_align import bilinear_weights


@dataclass(frozen=True)
class RotatedGeometry:
    """Where one rotated RoI's bins and sampling points lie, in feature-map cells."""

    center_h: float
    center_w: float
    start_h: float  # in the box's frame: -height / 2
    start_w: float
    bin_size_h: float
    bin_size_w: float
    cos: float
    sin: float
    grid_h: int
    grid_w: int

    @property
    def count(self) -> int:
        return max(self.grid_h * self.grid_w, 1)


def angle_radians(angle, angle_unit: str, clockwise: bool) -> float:
    """The angle in radians, counter-clockwise, computed in float64 (detectron2 forms
    ``angle * M_PI / 180.0`` in double precision)."""
    theta = float(angle) * math.pi / 180.0 if angle_unit == "degrees" else float(angle)
    return -theta if clockwise else theta


def rotated_geometry(
    box, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
    angle_unit="degrees", clockwise=False, dtype=np.float64,
) -> RotatedGeometry:  # fmt: skip
    """Bins and sampling grid of one box ``(cx, cy, w, h, angle)``."""
    T = np.dtype(dtype).type
    scale = T(spatial_scale)
    offset = T(0.5) if aligned else T(0.0)
    cx, cy, w, h = (T(v) for v in box[:4])
    center_w = cx * scale - offset
    center_h = cy * scale - offset
    width = w * scale
    height = h * scale
    if not aligned:
        # mmcv's legacy convention: boxes under one cell are forced to 1x1
        width = max(width, T(1.0))
        height = max(height, T(1.0))
    theta = T(angle_radians(box[4], angle_unit, clockwise))
    bin_size_h = height / T(pooled_height)
    bin_size_w = width / T(pooled_width)
    if sampling_ratio > 0:
        grid_h = grid_w = int(sampling_ratio)
    else:
        grid_h = max(int(math.ceil(height / T(pooled_height))), 0)
        grid_w = max(int(math.ceil(width / T(pooled_width))), 0)
    return RotatedGeometry(
        center_h, center_w, -height / T(2), -width / T(2), bin_size_h, bin_size_w,
        # cos and sin of the rounded angle in float64, rounded once: the same bits from
        # NumPy, Numba and CUDA's libdevice (a float32 cos differs between them by an ulp)
        T(math.cos(float(theta))), T(math.sin(float(theta))), grid_h, grid_w,
    )  # fmt: skip


def rotated_samples(g: RotatedGeometry, ph, pw, height, width, T):
    """BilinearWeights (or None) of every sampling point of bin (ph, pw), in order."""
    for iy in range(g.grid_h):
        yy = (g.start_h + T(ph) * g.bin_size_h) + T(iy + 0.5) * g.bin_size_h / T(g.grid_h)
        for ix in range(g.grid_w):
            xx = (g.start_w + T(pw) * g.bin_size_w) + T(ix + 0.5) * g.bin_size_w / T(g.grid_w)
            y = yy * g.cos - xx * g.sin + g.center_h
            x = yy * g.sin + xx * g.cos + g.center_w
            yield bilinear_weights(y, x, height, width, T)


def _geometries(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
                angle_unit, clockwise, T):  # fmt: skip
    for k in range(rois.shape[0]):
        g = rotated_geometry(
            rois[k, 1:6], spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
            angle_unit, clockwise, T,
        )  # fmt: skip
        yield k, int(rois[k, 0]), g


def roi_align_rotated_forward(input, rois, spatial_scale, pooled_height, pooled_width,
                              sampling_ratio, aligned=True, angle_unit="degrees",
                              clockwise=False):  # fmt: skip
    """``output[K, C, PH, PW]``: the mean of each bin's rotated sampling points."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    output = np.zeros((rois.shape[0], channels, pooled_height, pooled_width), input.dtype)
    for k, n, g in _geometries(rois, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio, aligned, angle_unit, clockwise, T):  # fmt: skip
        for c in range(channels):
            plane = input[n, c]
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    acc = T(0)
                    for bw in rotated_samples(g, ph, pw, height, width, T):
                        if bw is not None:
                            acc += (
                                bw.w1 * plane[bw.y_low, bw.x_low]
                                + bw.w2 * plane[bw.y_low, bw.x_high]
                                + bw.w3 * plane[bw.y_high, bw.x_low]
                                + bw.w4 * plane[bw.y_high, bw.x_high]
                            )
                    output[k, c, ph, pw] = acc / T(g.count)
    return output


def roi_align_rotated_backward(grad_output, rois, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio, input_shape, aligned=True, angle_unit="degrees",
                               clockwise=False):  # fmt: skip
    """Gradient w.r.t. the input: ``grad * w / count`` to each neighbour of each point."""
    T = grad_output.dtype.type
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    for k, n, g in _geometries(rois, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio, aligned, angle_unit, clockwise, T):  # fmt: skip
        add_roi_gradient(grad_input[n], grad_output[k], g, T)
    return grad_input


def add_roi_gradient(grad_image, grad_roi, g: RotatedGeometry, T):
    """``grad_image[C, H, W] += `` one RoI's share of the input gradient for its output
    gradient ``grad_roi[C, PH, PW]``, in the order channel, bin, point, corner."""
    channels, pooled_height, pooled_width = grad_roi.shape
    height, width = grad_image.shape[1:]
    for c in range(channels):
        for ph in range(pooled_height):
            for pw in range(pooled_width):
                grad = grad_roi[c, ph, pw]
                for bw in rotated_samples(g, ph, pw, height, width, T):
                    if bw is None:
                        continue
                    for yy, xx, w in bw.corners():
                        grad_image[c, yy, xx] += grad * w / T(g.count)
