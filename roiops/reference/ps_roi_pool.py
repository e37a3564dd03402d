"""Position-sensitive RoIPool (R-FCN), the executable spec: loops in NumPy, forward and
backward.

Bin (ph, pw) of output channel c_out reads input channel ``(c_out * PH + ph) * PW + pw``
(``roiops.reference.ps_roi_align.input_channel``) and outputs the **average** of its
cells. The quantization is torchvision's ``ps_roi_pool``, which is not RoIPool's:

1. box edges scaled to cells are rounded half away from zero; the box is
   ``end - start`` cells (end exclusive, unlike RoIPool), at least 1;
2. bin p covers cells ``floor(p * size / pooled)`` to ``ceil((p + 1) * size / pooled)``
   (exclusive), offset by the box start and clipped to ``[0, H - 1]``: torchvision's
   forward clips to the *last index*, not the size, so the map's last row and column are
   never pooled (an empty bin gives 0; on a map one cell high every bin is empty).

roiops keeps that forward, to give torchvision's numbers. The backward is the exact
gradient of this forward: each cell of a bin gets ``grad / area``. torchvision's
backward clips to ``[0, H]`` instead, so where a bin reaches the map's last row or
column its gradient differs from the derivative of its own forward (it spreads over
cells and an area that the forward did not use); roiops' does not.
"""

from __future__ import annotations

import numpy as np

from roiops.reference.ps_roi_align import input_channel, output_channels
from roiops.reference.roi_pool import QuantizedRoI, bin_edges, round_half_away


def quantize_ps_roi(box, spatial_scale, dtype=np.float64) -> QuantizedRoI:
    """Box ``(x1, y1, x2, y2)`` in image coordinates -> integer cells, end exclusive."""
    T = np.dtype(dtype).type
    scale = T(spatial_scale)
    x1, y1, x2, y2 = (round_half_away(T(v) * scale) for v in box)
    return QuantizedRoI(y1, x1, max(y2 - y1, 1), max(x2 - x1, 1))


def _bins(rois, spatial_scale, pooled_height, pooled_width, height, width, T):
    """(k, n, ph, pw, (h0, h1), (w0, w1)) of every bin of every RoI, torchvision's
    forward clipping (to the last index)."""
    for k in range(rois.shape[0]):
        q = quantize_ps_roi(rois[k, 1:5], spatial_scale, T)
        for ph in range(pooled_height):
            rows = bin_edges(q.start_h, q.height, pooled_height, ph, height - 1, T)
            for pw in range(pooled_width):
                cols = bin_edges(q.start_w, q.width, pooled_width, pw, width - 1, T)
                yield k, int(rois[k, 0]), ph, pw, rows, cols


def ps_roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width):
    """``output[K, C_out, PH, PW]``: the mean of each bin's cells in its own channel."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    channels_out = output_channels(channels, pooled_height, pooled_width)
    output = np.zeros((rois.shape[0], channels_out, pooled_height, pooled_width), input.dtype)
    bins = _bins(rois, spatial_scale, pooled_height, pooled_width, height, width, T)
    for k, n, ph, pw, (h0, h1), (w0, w1) in bins:
        if h1 <= h0 or w1 <= w0:
            continue
        area = T((h1 - h0) * (w1 - w0))
        for c_out in range(channels_out):
            plane = input[n, input_channel(c_out, ph, pw, pooled_height, pooled_width)]
            acc = T(0)
            for h in range(h0, h1):
                for w in range(w0, w1):
                    acc += plane[h, w]
            output[k, c_out, ph, pw] = acc / area
    return output


def ps_roi_pool_backward(grad_output, rois, spatial_scale, pooled_height, pooled_width,
                         input_shape):  # fmt: skip
    """Gradient w.r.t. the input, ``[N, C, H, W]``: ``grad / area`` to each cell of the bin."""
    T = grad_output.dtype.type
    _, _, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    bins = _bins(rois, spatial_scale, pooled_height, pooled_width, height, width, T)
    for k, n, ph, pw, (h0, h1), (w0, w1) in bins:
        if h1 <= h0 or w1 <= w0:
            continue
        area = T((h1 - h0) * (w1 - w0))
        for c_out in range(grad_output.shape[1]):
            c_in = input_channel(c_out, ph, pw, pooled_height, pooled_width)
            share = grad_output[k, c_out, ph, pw] / area
            grad_input[n, c_in, h0:h1, w0:w1] += share
    return grad_input
