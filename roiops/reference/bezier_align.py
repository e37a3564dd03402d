"""BezierAlign, the executable spec: loops in NumPy, forward and backward.

ABCNet (Liu et al. 2020) pools a text instance bounded by two cubic Bézier curves, the
top one ``p0..p3`` and the bottom one ``p4..p7`` (each row of ``rois`` is ``(batch_index,
p0x, p0y, ..., p7x, p7y)``, the bottom curve listed from its end: columns 9-16 hold
``p7, p6, p5, p4``). Bin ``(ph, pw)`` is centred at

    u = pw / PW,  v = ph / PH,
    centre = (1 - v) * B(p0..p3; u) + v * B(p4..p7; u) - offset

(``B`` the cubic Bézier, ``offset = 0.5`` when ``aligned``): the bins' *corners* in u
and v, not their middles, as AdelaiDet defined it. Around its centre a bin is an
axis-aligned box of ``roi_width / PW`` by ``roi_height / PH`` cells, with ``roi_width =
max(|p0x - p3x|, |p4x - p7x|)`` (likewise the height; legacy ``aligned=False``: at least
1), sampled on RoIAlign's grid (``sampling_ratio``, or ``ceil(bin size)`` points an
axis) and averaged. The backward sends ``grad * w / count`` to each neighbour of each
point. The Bézier curves get no gradient (as in mmcv and AdelaiDet).

Arithmetic is mmcv's CPU kernel's, in its C++ types: ``u``, ``v`` and the points in the
input's dtype ``T``; the curve's terms that have a double literal (``1. - u``, ``3. *
u``) in float64, its ``u * u * u * p3`` in ``T``, the curve and the centre summed in
float64 and rounded to ``T`` (so float32 results are mmcv's bit for bit, not a float64
computation rounded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from roiops.reference.roi_align import bilinear_weights, interpolate

D = np.float64


@dataclass(frozen=True)
class BezierGeometry:
    """One Bézier RoI's control points (scaled), bins and sampling grid."""

    points: tuple  # ((p0x, p0y), ..., (p7x, p7y)) in feature cells, the input's dtype
    offset: float
    bin_size_h: float
    bin_size_w: float
    grid_h: int
    grid_w: int

    @property
    def count(self) -> int:
        return max(self.grid_h * self.grid_w, 1)


# columns of p0..p7 (x, y) in a row of ``rois``: the bottom curve is listed reversed
CONTROL_COLUMNS = (1, 3, 5, 7, 15, 13, 11, 9)


def bezier_geometry(roi, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
                    dtype=np.float64) -> BezierGeometry:  # fmt: skip
    """The geometry of one row ``(batch_index, 16 coordinates)``."""
    T = np.dtype(dtype).type
    scale = T(spatial_scale)
    points = tuple((T(roi[c]) * scale, T(roi[c + 1]) * scale) for c in CONTROL_COLUMNS)
    (p0, _, _, p3, p4, _, _, p7) = points
    width = max(abs(p0[0] - p3[0]), abs(p4[0] - p7[0]))
    height = max(abs(p0[1] - p3[1]), abs(p4[1] - p7[1]))
    if not aligned:  # (mmcv's legacy convention, as RoIAlign's)
        width, height = max(width, T(1)), max(height, T(1))
    bin_size_h = height / T(pooled_height)
    bin_size_w = width / T(pooled_width)
    if sampling_ratio > 0:
        grid_h = grid_w = int(sampling_ratio)
    else:
        grid_h = int(math.ceil(height / T(pooled_height)))
        grid_w = int(math.ceil(width / T(pooled_width)))
    offset = T(0.5) if aligned else T(0)
    return BezierGeometry(points, offset, bin_size_h, bin_size_w, grid_h, grid_w)


def bezier_curve(p0, p1, p2, p3, u, T):
    """The cubic Bézier at u, as mmcv's C++ evaluates it for ``T``: every term with a
    double literal in float64, ``u * u * u * p3`` in ``T``, summed in float64, rounded."""
    a = D(1.0) - D(u)
    s = a * a * a * D(p0) + D(3.0) * D(u) * a * a * D(p1) + D(3.0) * D(u) * D(u) * a * D(p2)
    return T(s + D(T(u) * T(u) * T(u) * T(p3)))


def bin_centre(g: BezierGeometry, ph, pw, pooled_height, pooled_width, T):
    """(y_centre, x_centre) of bin (ph, pw): between the two curves at ``u = pw / PW``,
    ``v = ph / PH`` of the way from the top one."""
    u = T(pw) / T(pooled_width)
    v = T(ph) / T(pooled_height)
    p = g.points
    centre = []
    for axis in (1, 0):
        top = bezier_curve(p[0][axis], p[1][axis], p[2][axis], p[3][axis], u, T)
        bottom = bezier_curve(p[4][axis], p[5][axis], p[6][axis], p[7][axis], u, T)
        # ``x1 * v + x0 * (1. - v) - offset``: the first product in T, the rest in float64
        centre.append(T(D(bottom * v) + D(top) * (D(1.0) - D(v)) - D(g.offset)))
    return centre[0], centre[1]


def bin_points(g: BezierGeometry, ph, pw, pooled_height, pooled_width, T):
    """(y, x) of every sampling point of bin (ph, pw), in order."""
    y_centre, x_centre = bin_centre(g, ph, pw, pooled_height, pooled_width, T)
    for iy in range(g.grid_h):
        y = (y_centre - T(0.5) * g.bin_size_h) + T(iy + 0.5) * g.bin_size_h / T(g.grid_h)
        for ix in range(g.grid_w):
            x = (x_centre - T(0.5) * g.bin_size_w) + T(ix + 0.5) * g.bin_size_w / T(g.grid_w)
            yield y, x


def _geometries(rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, T):
    for k in range(rois.shape[0]):
        g = bezier_geometry(rois[k], spatial_scale, pooled_height, pooled_width,
                            sampling_ratio, aligned, T)  # fmt: skip
        yield k, int(rois[k, 0]), g


def bezier_align_forward(input, rois, spatial_scale, pooled_height, pooled_width,
                         sampling_ratio, aligned=True):  # fmt: skip
    """``output[K, C, PH, PW]``: the mean of each bin's sampling points."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    output = np.zeros((rois.shape[0], channels, pooled_height, pooled_width), input.dtype)
    for k, n, g in _geometries(rois, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio, aligned, T):  # fmt: skip
        for c in range(channels):
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    acc = T(0)
                    for y, x in bin_points(g, ph, pw, pooled_height, pooled_width, T):
                        acc += interpolate(input[n, c], bilinear_weights(y, x, height, width, T), T)
                    output[k, c, ph, pw] = acc / T(g.count)
    return output


def bezier_align_backward(grad_output, rois, spatial_scale, pooled_height, pooled_width,
                          sampling_ratio, input_shape, aligned=True):  # fmt: skip
    """Gradient w.r.t. the input, ``[N, C, H, W]``: ``grad * w / count`` to each neighbour
    of each point, RoIs in order, then channels, bins, points, corners."""
    T = grad_output.dtype.type
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    for k, n, g in _geometries(rois, spatial_scale, pooled_height, pooled_width,
                               sampling_ratio, aligned, T):  # fmt: skip
        count = T(g.grid_h * g.grid_w)
        for c in range(channels):
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    grad = grad_output[k, c, ph, pw]
                    for y, x in bin_points(g, ph, pw, pooled_height, pooled_width, T):
                        bw = bilinear_weights(y, x, height, width, T)
                        if bw is None:
                            continue
                        for yy, xx, w in bw.corners():
                            grad_input[n, c, yy, xx] += grad * w / count
    return grad_input
