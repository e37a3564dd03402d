"""RoIPool (Fast R-CNN), the executable spec: readable loops in NumPy, forward and backward.

RoIPool quantizes twice, exactly as Caffe's original kernel (and torchvision) does:

1. the box edges, scaled to feature cells, are rounded to the nearest cell (half away
   from zero, C's ``round``) and the box is taken as *inclusive* of its end cell, so
   its size is ``end - start + 1`` cells (at least 1: a malformed box becomes 1x1);
2. that integer box is cut into ``pooled_height x pooled_width`` bins of real size
   ``roi_height / pooled_height``; bin ``p`` covers cells ``floor(p * size)`` up to
   ``ceil((p + 1) * size)`` (exclusive), clipped to the map. Neighbouring bins can
   therefore overlap by a cell, and no bin is empty unless clipping empties it.

Each bin outputs the max of its cells (0 for an empty bin). Backward routes the
output's gradient to the one cell that won the max (the argmax), nothing to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Bins start from -FLT_MAX (not -inf), as torchvision's kernel does in every dtype.
LOWEST = -float(np.finfo(np.float32).max)


def round_half_away(value) -> int:
    """C's ``round``: halves go away from zero (NumPy's ``round`` goes to even)."""
    magnitude = abs(float(value))
    whole = math.floor(magnitude)
    # ``magnitude - whole`` is exact, unlike ``magnitude + 0.5`` which can round up.
    if magnitude - whole >= 0.5:
        whole += 1
    return int(math.copysign(whole, value))


@dataclass(frozen=True)
class QuantizedRoI:
    """A RoI snapped to integer feature cells: rows/cols ``start .. start + size - 1``."""

    start_h: int
    start_w: int
    height: int
    width: int


def quantize_roi(box, spatial_scale, dtype=np.float64) -> QuantizedRoI:
    """First quantization: box ``(x1, y1, x2, y2)`` in image coordinates -> integer cells."""
    T = np.dtype(dtype).type
    scale = T(spatial_scale)
    x1, y1, x2, y2 = (round_half_away(T(v) * scale) for v in box)
    return QuantizedRoI(y1, x1, max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1))


def bin_edges(roi_start, roi_size, pooled, index, limit, dtype=np.float64) -> tuple[int, int]:
    """Second quantization: cell range ``[start, end)`` of bin ``index`` along one axis."""
    T = np.dtype(dtype).type
    bin_size = T(roi_size) / T(pooled)
    start = int(math.floor(T(index) * bin_size)) + roi_start
    end = int(math.ceil(T(index + 1) * bin_size)) + roi_start
    return min(max(start, 0), limit), min(max(end, 0), limit)


def roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width):
    """RoIPool forward. Returns ``(output, argmax)``.

    ``argmax[k, c, ph, pw]`` is the flat index ``h * W + w`` of the winning cell in its
    ``[H, W]`` plane, or -1 for an empty bin (output 0). The first maximum in row-major
    order wins ties.
    """
    T = input.dtype.type
    _, channels, height, width = input.shape
    K = rois.shape[0]
    output = np.zeros((K, channels, pooled_height, pooled_width), dtype=input.dtype)
    argmax = np.full((K, channels, pooled_height, pooled_width), -1, dtype=np.int32)
    for k in range(K):
        n = int(rois[k, 0])
        q = quantize_roi(rois[k, 1:5], spatial_scale, T)
        for ph in range(pooled_height):
            h0, h1 = bin_edges(q.start_h, q.height, pooled_height, ph, height, T)
            for pw in range(pooled_width):
                w0, w1 = bin_edges(q.start_w, q.width, pooled_width, pw, width, T)
                if h1 <= h0 or w1 <= w0:
                    continue
                for c in range(channels):
                    best, best_index = T(LOWEST), -1
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if input[n, c, h, w] > best:
                                best, best_index = input[n, c, h, w], h * width + w
                    output[k, c, ph, pw] = best
                    argmax[k, c, ph, pw] = best_index
    return output, argmax


def roi_pool_backward(grad_output, rois, argmax, input_shape):
    """Gradient w.r.t. the input: each output's gradient goes to its argmax cell."""
    _, channels, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    K, _, pooled_height, pooled_width = grad_output.shape
    for k in range(K):
        n = int(rois[k, 0])
        for c in range(channels):
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    index = argmax[k, c, ph, pw]
                    if index >= 0:
                        grad_input[n, c, index // width, index % width] += grad_output[k, c, ph, pw]
    return grad_input
