"""Precise RoI Pooling (Jiang et al., ECCV 2018, "Acquisition of Localization Confidence
for Accurate Object Detection"), the executable spec: forward, input and box gradients.

Each bin is the exact integral of the feature map's bilinear interpolant over the bin,
divided by the bin's area: no sampling points, no quantization, and the output is
differentiable in the box coordinates as well as in the features.

Conventions of the reference implementation (github.com/vacancy/PreciseRoIPooling,
followed here formula for formula):

* box edges are ``x * spatial_scale`` (no half-pixel offset); the box is
  ``max(x2' - x1', 0)`` by ``max(y2' - y1', 0)`` cells; bin ``(ph, pw)`` is the window
  ``[x1' + pw * bw, x1' + (pw + 1) * bw]`` (likewise y) with ``bw = width / PW``;
* the interpolant is that of the map **padded with zeros** outside ``[0, H) x [0, W)``
  (unlike RoIAlign, which replicates the border): a cell corner outside reads 0;
* a bin of zero area outputs 0 and passes no gradient;
* the integral over a window is the sum, over the unit cells it meets, of closed forms
  of ``int (1 - a)`` and ``int a`` per axis (``_window_integral``); the box gradient
  uses the integrals of the interpolant along the window's edges (``_edge_integral``):
  ``d out / d x1_window = (-int_y f(x1, y) dy + (y2 - y1) * out) / area``, then the
  chain rule to the box edges (a window edge is ``x1' + (x2' - x1') * p / PW``).
"""

from __future__ import annotations

import math

import numpy as np


def _value(plane, h, w):
    """plane[h, w], 0 outside the map."""
    height, width = plane.shape
    return plane[h, w] if 0 <= h < height and 0 <= w < width else 0


def _ramp_integral(lo, hi, T):
    """int_lo^hi (1 - a) da, as the reference implementation writes it."""
    return hi - T(0.5) * hi * hi - lo + T(0.5) * lo * lo


def _cell_integral(plane, h, w, y0, x0, y1, x1, T):
    """Integral over [y0, y1] x [x0, x1] (inside unit cell (h, w)) of the interpolant."""
    alpha, lim_alpha = x0 - T(w), x1 - T(w)
    beta, lim_beta = y0 - T(h), y1 - T(h)
    total = _value(plane, h, w) * (
        _ramp_integral(alpha, lim_alpha, T) * _ramp_integral(beta, lim_beta, T)
    )
    alpha_e, lim_alpha_e = T(w + 1) - x1, T(w + 1) - x0
    total += _value(plane, h, w + 1) * (
        _ramp_integral(alpha_e, lim_alpha_e, T) * _ramp_integral(beta, lim_beta, T)
    )
    beta_e, lim_beta_e = T(h + 1) - y1, T(h + 1) - y0
    total += _value(plane, h + 1, w) * (
        _ramp_integral(alpha, lim_alpha, T) * _ramp_integral(beta_e, lim_beta_e, T)
    )
    total += _value(plane, h + 1, w + 1) * (
        _ramp_integral(alpha_e, lim_alpha_e, T) * _ramp_integral(beta_e, lim_beta_e, T)
    )
    return total


def _cell_coefficients(h, w, y0, x0, y1, x1, T):
    """((h', w', coefficient) for the cell's four corners): d integral / d plane[h', w']."""
    alpha, lim_alpha = x0 - T(w), x1 - T(w)
    beta, lim_beta = y0 - T(h), y1 - T(h)
    alpha_e, lim_alpha_e = T(w + 1) - x1, T(w + 1) - x0
    beta_e, lim_beta_e = T(h + 1) - y1, T(h + 1) - y0
    a0, a1 = _ramp_integral(alpha, lim_alpha, T), _ramp_integral(alpha_e, lim_alpha_e, T)
    b0, b1 = _ramp_integral(beta, lim_beta, T), _ramp_integral(beta_e, lim_beta_e, T)
    return ((h, w, a0 * b0), (h, w + 1, a1 * b0), (h + 1, w, a0 * b1), (h + 1, w + 1, a1 * b1))


def _interpolate(plane, y, x, T):
    """The zero-padded bilinear interpolant at (y, x)."""
    total = T(0)
    for h in (math.floor(y), math.floor(y) + 1):
        for w in (math.floor(x), math.floor(x) + 1):
            total += _value(plane, h, w) * ((T(1) - abs(y - T(h))) * (T(1) - abs(x - T(w))))
    return total


def _edge_integral(s, t, c1, c2, T):
    """int_s^t of the linear interpolation between c1 (at 0) and c2 (at 1)."""
    return T(0.5) * (t * t - s * s) * c2 + (t - T(0.5) * t * t - s + T(0.5) * s * s) * c1


def windows(box, spatial_scale, pooled_height, pooled_width, T):
    """Yields (ph, pw, y0, x0, y1, x1, area) of every bin of a box (x1, y1, x2, y2)."""
    scale = T(spatial_scale)
    x1, y1, x2, y2 = (T(v) * scale for v in box)
    bin_h = max(y2 - y1, T(0)) / T(pooled_height)
    bin_w = max(x2 - x1, T(0)) / T(pooled_width)
    for ph in range(pooled_height):
        for pw in range(pooled_width):
            start_w = x1 + bin_w * T(pw)
            start_h = y1 + bin_h * T(ph)
            yield (
                ph,
                pw,
                start_h,
                start_w,
                start_h + bin_h,
                start_w + bin_w,
                max(T(0), bin_w * bin_h),
            )


def cell_range(lo, hi, size):
    """``(first, end)``: the unit cells ``[c, c + 1)`` that meet ``[lo, hi]`` along an axis
    of ``size`` cells, those from -1 to size - 1 only. A cell beyond has four zero
    corners (zero padding) and adds zero, exactly; leaving it out keeps a box far past
    the map from taking as long as it is wide."""
    first = math.floor(min(max(lo, -1), size))
    return first, math.ceil(max(min(hi, size), -1))


def _cells(y0, x0, y1, x1, height, width):
    """Unit cells (h, w) the window meets (``cell_range``), columns outer, and the
    window's part in each."""
    for w in range(*cell_range(x0, x1, width)):
        for h in range(*cell_range(y0, y1, height)):
            yield h, w, max(y0, h), max(x0, w), min(y1, h + 1), min(x1, w + 1)


def prroi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width):
    """``output[K, C, PH, PW]``: each bin's integral of the interpolant / its area."""
    T = input.dtype.type
    _, channels, _, _ = input.shape
    output = np.zeros((rois.shape[0], channels, pooled_height, pooled_width), input.dtype)
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        for ph, pw, y0, x0, y1, x1, area in windows(
            rois[k, 1:5], spatial_scale, pooled_height, pooled_width, T
        ):
            if area == 0:
                continue
            for c in range(channels):
                total = T(0)
                for h, w, cy0, cx0, cy1, cx1 in _cells(y0, x0, y1, x1, *input.shape[2:]):
                    total += _cell_integral(input[n, c], h, w, T(cy0), T(cx0), T(cy1), T(cx1), T)
                output[k, c, ph, pw] = total / area
    return output


def prroi_pool_backward(grad_output, rois, spatial_scale, pooled_height, pooled_width,
                        input_shape):  # fmt: skip
    """Gradient w.r.t. the input: ``grad / area`` times each corner's coefficient."""
    T = grad_output.dtype.type
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        for ph, pw, y0, x0, y1, x1, area in windows(
            rois[k, 1:5], spatial_scale, pooled_height, pooled_width, T
        ):
            if area == 0:
                continue
            for c in range(channels):
                share = grad_output[k, c, ph, pw] / area
                for h, w, cy0, cx0, cy1, cx1 in _cells(y0, x0, y1, x1, height, width):
                    for hh, ww, coefficient in _cell_coefficients(
                        h, w, T(cy0), T(cx0), T(cy1), T(cx1), T
                    ):
                        if 0 <= hh < height and 0 <= ww < width:
                            grad_input[n, c, hh, ww] += share * coefficient
    return grad_input


def prroi_pool_box_backward(grad_output, input, rois, output, spatial_scale, pooled_height,
                            pooled_width):  # fmt: skip
    """Gradient w.r.t. the rois ``[K, 5]`` (column 0 gets 0), given the forward output."""
    T = input.dtype.type
    scale = T(spatial_scale)
    grad_boxes = np.zeros((rois.shape[0], 5), dtype=input.dtype)
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        for ph, pw, y0, x0, y1, x1, area in windows(
            rois[k, 1:5], spatial_scale, pooled_height, pooled_width, T
        ):
            if area == 0:
                continue
            for c in range(input.shape[1]):
                plane = input[n, c]
                g = grad_output[k, c, ph, pw]
                out = output[k, c, ph, pw]
                if g / area == 0:
                    continue
                g_x1 = g_x2 = g_y1 = g_y2 = T(0)
                for h in range(*cell_range(y0, y1, plane.shape[0])):
                    s, t = max(y0, T(h)) - T(h), min(y1, T(h + 1)) - T(h)
                    g_x1 += _edge_integral(s, t, _interpolate(plane, T(h), x0, T),
                                           _interpolate(plane, T(h + 1), x0, T), T)  # fmt: skip
                    g_x2 += _edge_integral(s, t, _interpolate(plane, T(h), x1, T),
                                           _interpolate(plane, T(h + 1), x1, T), T)  # fmt: skip
                for w in range(*cell_range(x0, x1, plane.shape[1])):
                    s, t = max(x0, T(w)) - T(w), min(x1, T(w + 1)) - T(w)
                    g_y1 += _edge_integral(s, t, _interpolate(plane, y0, T(w), T),
                                           _interpolate(plane, y0, T(w + 1), T), T)  # fmt: skip
                    g_y2 += _edge_integral(s, t, _interpolate(plane, y1, T(w), T),
                                           _interpolate(plane, y1, T(w + 1), T), T)  # fmt: skip
                d_x1 = (-g_x1 + (y1 - y0) * out) / area * scale
                d_y1 = (-g_y1 + (x1 - x0) * out) / area * scale
                d_x2 = (g_x2 - (y1 - y0) * out) / area * scale
                d_y2 = (g_y2 - (x1 - x0) * out) / area * scale
                t0_w, t1_w = T(pw) / T(pooled_width), T(pw + 1) / T(pooled_width)
                t0_h, t1_h = T(ph) / T(pooled_height), T(ph + 1) / T(pooled_height)
                grad_boxes[k, 1] += (d_x1 * (T(1) - t0_w) + d_x2 * (T(1) - t1_w)) * g
                grad_boxes[k, 2] += (d_y1 * (T(1) - t0_h) + d_y2 * (T(1) - t1_h)) * g
                grad_boxes[k, 3] += (d_x2 * t1_w + d_x1 * t0_w) * g
                grad_boxes[k, 4] += (d_y2 * t1_h + d_y1 * t0_h) * g
    return grad_boxes
