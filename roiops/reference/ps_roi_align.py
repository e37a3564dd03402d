"""Position-sensitive RoIAlign (R-FCN, Dai et al. 2016), the executable spec.

R-FCN scores a RoI with ``k x k`` position-sensitive maps: the input has
``C = C_out * PH * PW`` channels, and bin ``(ph, pw)`` of output channel ``c_out`` reads
only input channel ``c_in = (c_out * PH + ph) * PW + pw`` (``input_channel``), so that
each bin looks at the maps trained for its relative position in the object. Within its
channel a bin is pooled as RoIAlign pools it, with the conventions of
``torchvision.ops.ps_roi_align``: always half-pixel aligned (``aligned=True``), average of
the bilinearly interpolated sampling points, ``sampling_ratio <= 0`` adaptive.

One difference from torchvision, by choice: a bin whose adaptive sampling grid is empty
(a zero-size box) gives 0, as ``roi_align`` does; torchvision's ps_roi_align divides
0 by 0 there and returns NaN. Arithmetic is in the input's dtype and in torchvision's
order (the backward multiplies by the bilinear weight, then divides by the sample
count), so float32 results agree with torchvision's CPU kernel to the last bit.

Layout: ``input[N, C, H, W]``, ``rois[K, 5]``, output ``[K, C // (PH * PW), PH, PW]``.
"""

from __future__ import annotations

import numpy as np

from roiops.reference.roi_align import bin_samples, geometries, interpolate


def input_channel(c_out: int, ph: int, pw: int, pooled_height: int, pooled_width: int) -> int:
    """The input channel that bin (ph, pw) of output channel ``c_out`` reads."""
    return (c_out * pooled_height + ph) * pooled_width + pw


def output_channels(channels: int, pooled_height: int, pooled_width: int) -> int:
    return channels // (pooled_height * pooled_width)


def ps_roi_align_forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    """``output[K, C_out, PH, PW]``: the mean of each bin's sampling points in its own
    input channel."""
    T = input.dtype.type
    _, channels, height, width = input.shape
    channels_out = output_channels(channels, pooled_height, pooled_width)
    output = np.zeros((rois.shape[0], channels_out, pooled_height, pooled_width), input.dtype)
    for k, n, g in geometries(
        rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, True, T
    ):
        for c_out in range(channels_out):
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    plane = input[n, input_channel(c_out, ph, pw, pooled_height, pooled_width)]
                    acc = T(0)
                    for _, bw in bin_samples(g, ph, pw, height, width, T):
                        acc += interpolate(plane, bw, T)
                    output[k, c_out, ph, pw] = acc / T(g.count)
    return output


def ps_roi_align_backward(
    grad_output, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, input_shape
):
    """Gradient w.r.t. the input, ``[N, C, H, W]``: each sampling point of bin (ph, pw)
    passes ``grad * w / count`` to each of its four neighbours in the bin's channel."""
    T = grad_output.dtype.type
    _, _, height, width = input_shape
    grad_input = np.zeros(input_shape, dtype=grad_output.dtype)
    channels_out = grad_output.shape[1]
    for k, n, g in geometries(
        rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, True, T
    ):
        for c_out in range(channels_out):
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    c_in = input_channel(c_out, ph, pw, pooled_height, pooled_width)
                    grad = grad_output[k, c_out, ph, pw]
                    for _, bw in bin_samples(g, ph, pw, height, width, T):
                        if bw is None:
                            continue
                        for yy, xx, w in bw.corners():
                            grad_input[n, c_in, yy, xx] += grad * w / T(g.count)
    return grad_input
