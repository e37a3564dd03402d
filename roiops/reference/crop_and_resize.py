"""CropAndResize (TensorFlow's ``tf.image.crop_and_resize``), the executable spec: loops
in NumPy, forward and backward.

The RoI op of TensorFlow's detectors (the Object Detection API's Faster R-CNN, Mask R-CNN
ports such as matterport's ``PyramidROIAlign``) and of the PyTorch ports of its kernel
(``RoIAlign.pytorch``'s ``CropAndResize``). Box k is ``(y1, x1, y2, x2)`` in normalized
coordinates of image ``index[k]``: 0 is the first row (column), 1 the last. Crop row i
of ``crop_h`` samples the image at

    y = y1 * (H - 1) + i * ((y2 - y1) * (H - 1) / (crop_h - 1))      (crop_h > 1)
    y = 0.5 * (y1 + y2) * (H - 1)                                    (crop_h == 1)

(columns likewise): the crop's first and last samples on the box's edges. A sample
outside ``[0, H - 1] x [0, W - 1]`` (or at no finite place) is ``extrapolation_value``;
inside it is read bilinearly between ``floor`` and ``ceil`` (``top + (bottom - top) *
y_lerp`` of ``left + (right - left) * x_lerp``), or, ``nearest``, at the rounded
position (halves away from zero). All arithmetic is in the boxes' dtype, in
TensorFlow's order.

Gradients (TensorFlow's): to the image, each sample's bilinear shares (``nearest``: the
whole gradient to its cell); to the boxes, each sample's slope between ``floor`` and
``ceil`` (0 along an axis where it lies on a whole cell) times the derivative of its
position w.r.t. each coordinate, summed over the crop's samples and channels in order.
``nearest`` sends the boxes no gradient (its forward is flat in them; TensorFlow's
gradient op computes bilinear slopes whatever the method).
"""

from __future__ import annotations

import math

import numpy as np

from roiops.reference.roi_pool import round_half_away


def positions(lo, hi, size, crop, T):
    """The crop's sample positions along an axis of ``size`` cells, box edges ``lo``,
    ``hi`` (normalized), and each position's derivative w.r.t. ``lo`` and ``hi``."""
    last = T(size - 1)
    if crop == 1:
        return [(T(0.5) * (lo + hi) * last, T(0.5) * last, T(0.5) * last)]
    scale = (hi - lo) * last / T(crop - 1)
    ratio = last / T(crop - 1)
    return [(lo * last + T(i) * scale, last - T(i) * ratio, T(i) * ratio) for i in range(crop)]


def inside(v, size) -> bool:
    """A sample at ``v`` reads the image (NaN does not)."""
    return 0 <= v <= size - 1


def lerp_cell(v, T):
    """(low, high, fraction): the cells around ``v`` (``floor``, ``ceil``) and its place
    between them."""
    low = math.floor(v)
    return low, math.ceil(v), v - T(low)


def samples(rois, height, width, crop_h, crop_w, T):
    """(k, n, i, j, (y, dy1, dy2), (x, dx1, dx2)) of every sample of every box that reads
    the image, in order (boxes, rows, columns): its box, image, place in the crop,
    position and the position's derivatives w.r.t. the box's edges."""
    for k in range(rois.shape[0]):
        n = int(rois[k, 0])
        y1, x1, y2, x2 = (T(v) for v in rois[k, 1:5])
        for i, row in enumerate(positions(y1, y2, height, crop_h, T)):
            if not inside(row[0], height):
                continue
            for j, col in enumerate(positions(x1, x2, width, crop_w, T)):
                if inside(col[0], width):
                    yield k, n, i, j, row, col


def crop_and_resize_forward(input, rois, crop_h, crop_w, nearest, extrapolation_value):
    """``output[K, C, crop_h, crop_w]``; ``rois[K, 5]`` = (image, y1, x1, y2, x2)."""
    T = rois.dtype.type
    _, channels, height, width = input.shape
    image = input.astype(T)
    output = np.full((rois.shape[0], channels, crop_h, crop_w), extrapolation_value,
                     dtype=input.dtype)  # fmt: skip
    for k, n, i, j, (y, _, _), (x, _, _) in samples(rois, height, width, crop_h, crop_w, T):
        if nearest:
            output[k, :, i, j] = input[n, :, round_half_away(y), round_half_away(x)]
            continue
        top, bottom, y_lerp = lerp_cell(y, T)
        left, right, x_lerp = lerp_cell(x, T)
        for c in range(channels):
            plane = image[n, c]
            upper = plane[top, left] + (plane[top, right] - plane[top, left]) * x_lerp
            lower = plane[bottom, left] + (plane[bottom, right] - plane[bottom, left]) * x_lerp
            output[k, c, i, j] = upper + (lower - upper) * y_lerp
    return output


def crop_and_resize_backward(grad_output, rois, nearest, input_shape):
    """Gradient w.r.t. the input, ``[N, C, H, W]``: boxes in order, then rows, columns,
    channels, and each sample's corners top-left, top-right, bottom-left,
    bottom-right."""
    T = rois.dtype.type
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    _, _, crop_h, crop_w = grad_output.shape
    for k, n, i, j, (y, _, _), (x, _, _) in samples(rois, height, width, crop_h, crop_w, T):
        for c in range(channels):
            g = T(grad_output[k, c, i, j])
            if nearest:
                grad_input[n, c, round_half_away(y), round_half_away(x)] += g
                continue
            top, bottom, y_lerp = lerp_cell(y, T)
            left, right, x_lerp = lerp_cell(x, T)
            upper = (T(1) - y_lerp) * g
            grad_input[n, c, top, left] += (T(1) - x_lerp) * upper
            grad_input[n, c, top, right] += x_lerp * upper
            lower = y_lerp * g
            grad_input[n, c, bottom, left] += (T(1) - x_lerp) * lower
            grad_input[n, c, bottom, right] += x_lerp * lower
    return grad_input


def crop_and_resize_box_backward(grad_output, input, rois, nearest):
    """Gradient w.r.t. the boxes, ``[K, 4]`` (y1, x1, y2, x2): per sample and channel the
    image's slopes times the output's gradient times each coordinate's derivative of the
    sample's position, added in TensorFlow's order (rows, columns, channels); none for
    ``nearest``."""
    T = rois.dtype.type
    _, channels, height, width = input.shape
    _, _, crop_h, crop_w = grad_output.shape
    grad_boxes = np.zeros((rois.shape[0], 4), dtype=rois.dtype)
    if nearest:
        return grad_boxes
    for k, n, i, j, (y, dy1, dy2), (x, dx1, dx2) in samples(rois, height, width, crop_h, crop_w,
                                                            T):  # fmt: skip
        top, bottom, y_lerp = lerp_cell(y, T)
        left, right, x_lerp = lerp_cell(x, T)
        for c in range(channels):
            plane = input[n, c]
            tl, tr = T(plane[top, left]), T(plane[top, right])
            bl, br = T(plane[bottom, left]), T(plane[bottom, right])
            slope_y = (T(1) - x_lerp) * (bl - tl) + x_lerp * (br - tr)
            slope_x = (T(1) - y_lerp) * (tr - tl) + y_lerp * (br - bl)
            g = T(grad_output[k, c, i, j])
            slope_y = slope_y * g
            slope_x = slope_x * g
            grad_boxes[k, 0] += slope_y * dy1
            grad_boxes[k, 2] += slope_y * dy2
            grad_boxes[k, 1] += slope_x * dx1
            grad_boxes[k, 3] += slope_x * dx2
    return grad_boxes
