"""Rotation-invariant RoIAlign (ReDet's RiRoIAlignRotated), the executable spec: loops in
NumPy, forward and backward.

ReDet (Han et al., CVPR 2021) computes rotation-equivariant features: each of ``C``
channel groups holds ``O`` orientation channels, channel ``c * O + j`` the response to
orientation ``j * 2 pi / O``. Pooling a rotated box with angle ``theta`` (radians,
mmcv's ``(batch_index, cx, cy, w, h, theta)``) must also turn the orientations so the
pooled features do not depend on the box's angle: with

    theta * O / (2 pi) = s + f      (s whole, 0 <= f < 1)

output channel ``(c, o)`` reads, at every sampling point, orientation ``(o - s) mod O``
weighted ``1 - f`` and the next one, ``(o - s + 1) mod O``, weighted ``f``. The points
and bins are rotated RoIAlign's in mmcv's legacy convention (``aligned=False``: no
half-pixel offset, boxes under one cell forced to 1x1; ``roiops.reference.
roi_align_rotated``); ``clockwise`` turns the sampling grid the other way but not the
orientations (mmcv). The boxes get no gradient.

Arithmetic as mmcv's CUDA kernel (it has no CPU one), without its fused multiply-adds:
``theta * O`` in the boxes' dtype, divided by ``2 pi`` in float64 and rounded to it;
each point adds ``(1 - f) * value + f * next_value`` to the bin's sum, which is divided
by the point count; backward sends ``grad * w / count * (1 - f)`` (and ``* f``) to each
corner of each point.
"""

from __future__ import annotations

import math

import numpy as np

from roiops.reference.roi_align import interpolate
from roiops.reference.roi_align_rotated import rotated_geometry, rotated_samples


def orientation_shift(angle, num_orientations: int, T) -> tuple[int, float, float]:
    """``(s, 1 - f, f)`` of one box's angle: ``s = floor(theta * O / (2 pi)) mod O`` and
    the fraction ``f``, in mmcv's arithmetic."""
    position = T(float(T(angle) * T(num_orientations)) / (2 * math.pi))
    whole = math.floor(position)
    fraction = position - T(whole)
    return whole % num_orientations, T(1) - fraction, fraction


def _rois(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, num_orientations,
          clockwise, T):  # fmt: skip
    for k in range(rois.shape[0]):
        g = rotated_geometry(
            rois[k, 1:6], spatial_scale, pooled_height, pooled_width, sampling_ratio, False,
            "radians", clockwise, T,
        )  # fmt: skip
        yield k, int(rois[k, 0]), g, orientation_shift(rois[k, 5], num_orientations, T)


def _channels(c, o, shift, num_orientations):
    """The input channels that output channel ``(c, o)`` reads: ``o - s`` and the next."""
    first = (o - shift) % num_orientations
    return c * num_orientations + first, c * num_orientations + (first + 1) % num_orientations


def riroi_align_rotated_forward(input, rois, spatial_scale, pooled_height, pooled_width,
                                sampling_ratio, num_orientations, clockwise=False):  # fmt: skip
    """``output[K, C * O, PH, PW]`` from ``input[N, C * O, H, W]``."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    output = np.zeros((rois.shape[0], channels, pooled_height, pooled_width), input.dtype)
    boxes = _rois(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                  num_orientations, clockwise, T)  # fmt: skip
    for k, n, g, (shift, right, left) in boxes:
        for c in range(channels // num_orientations):
            for o in range(num_orientations):
                first, second = _channels(c, o, shift, num_orientations)
                for ph in range(pooled_height):
                    for pw in range(pooled_width):
                        acc = T(0)
                        for bw in rotated_samples(g, ph, pw, height, width, T):
                            if bw is not None:
                                acc += right * interpolate(input[n, first], bw, T) + left * (
                                    interpolate(input[n, second], bw, T)
                                )
                        output[k, c * num_orientations + o, ph, pw] = acc / T(g.count)
    return output


def riroi_align_rotated_backward(grad_output, rois, spatial_scale, pooled_height, pooled_width,
                                 sampling_ratio, num_orientations, input_shape,
                                 clockwise=False):  # fmt: skip
    """Gradient w.r.t. the input: ``grad * w / count`` times ``1 - f`` to each corner of
    each point in the first orientation, times ``f`` in the second."""
    T = grad_output.dtype.type
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    height, width = input_shape[2:]
    boxes = _rois(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                  num_orientations, clockwise, T)  # fmt: skip
    for k, n, g, (shift, right, left) in boxes:
        for c in range(input_shape[1] // num_orientations):
            for o in range(num_orientations):
                first, second = _channels(c, o, shift, num_orientations)
                for ph in range(pooled_height):
                    for pw in range(pooled_width):
                        grad = grad_output[k, c * num_orientations + o, ph, pw]
                        for bw in rotated_samples(g, ph, pw, height, width, T):
                            if bw is None:
                                continue
                            for yy, xx, w in bw.corners():
                                share = grad * w / T(g.count)
                                grad_input[n, first, yy, xx] += share * right
                                grad_input[n, second, yy, xx] += share * left
    return grad_input
