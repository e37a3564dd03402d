"""Multi-scale RoIAlign (the FPN pooler), the executable spec.

An FPN detector pools each RoI from one level of its feature pyramid, the level chosen
from the box's size (``roiops.levels``, Lin et al. 2017, eq. 1), and the level's
``spatial_scale``. The spec is exactly that composition: RoI k is RoIAlign
(``roiops.reference.roi_align``, average mode) of ``features[levels[k]]`` at
``scales[levels[k]]``; its gradient goes to that level only. Rotated boxes (detectron2's
``ROIAlignRotated`` pooler) likewise with rotated RoIAlign
(``roiops.reference.roi_align_rotated``).
"""

from __future__ import annotations

import numpy as np

from roiops.reference.roi_align import bin_samples, roi_align_forward, roi_geometry
from roiops.reference.roi_align_rotated import (
    add_roi_gradient,
    roi_align_rotated_forward,
    rotated_geometry,
)
from roiops.reference.roi_pool import roi_pool_forward


def multi_scale_roi_align_forward(
    features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned
):
    """``output[K, C, PH, PW]``: RoI k pooled from ``features[levels[k]]``."""
    channels = features[0].shape[1]
    output = np.zeros((rois.shape[0], channels, pooled_height, pooled_width), features[0].dtype)
    for k in range(rois.shape[0]):
        level = int(levels[k])
        out, _ = roi_align_forward(
            features[level], rois[k : k + 1], scales[level], pooled_height, pooled_width,
            sampling_ratio, aligned,
        )  # fmt: skip
        output[k] = out[0]
    return output


def multi_scale_roi_align_backward(
    grad_output, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned,
    shapes,
):  # fmt: skip
    """One gradient per level (``shapes[l]`` = ``[N, C, H_l, W_l]``): each sampling point
    of RoI k passes ``grad / count`` times its bilinear weights to its level's cells, RoIs
    in input order, as ``roi_align_backward`` does for one level."""
    T = grad_output.dtype.type
    grads = [np.zeros(shape, grad_output.dtype) for shape in shapes]
    for k in range(rois.shape[0]):
        level = int(levels[k])
        n = int(rois[k, 0])
        height, width = shapes[level][2], shapes[level][3]
        g = roi_geometry(
            rois[k, 1:5], scales[level], pooled_height, pooled_width, sampling_ratio, aligned, T
        )
        for c in range(grad_output.shape[1]):
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    share = grad_output[k, c, ph, pw] / T(g.count)
                    for _, bw in bin_samples(g, ph, pw, height, width, T):
                        if bw is None:
                            continue
                        for yy, xx, w in bw.corners():
                            grads[level][n, c, yy, xx] += share * w
    return grads


def multi_scale_roi_align_rotated_forward(
    features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned,
    angle_unit="degrees", clockwise=False,
):  # fmt: skip
    """``output[K, C, PH, PW]``: rotated RoI k (``rois[K, 6]``) pooled from
    ``features[levels[k]]``."""
    channels = features[0].shape[1]
    output = np.zeros((rois.shape[0], channels, pooled_height, pooled_width), features[0].dtype)
    for k in range(rois.shape[0]):
        level = int(levels[k])
        output[k] = roi_align_rotated_forward(
            features[level], rois[k : k + 1], scales[level], pooled_height, pooled_width,
            sampling_ratio, aligned, angle_unit, clockwise,
        )[0]  # fmt: skip
    return output


def multi_scale_roi_align_rotated_backward(
    grad_output, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned,
    shapes, angle_unit="degrees", clockwise=False,
):  # fmt: skip
    """One gradient per level: ``grad * w / count`` to each neighbour of each rotated
    sampling point of RoI k, in its level, RoIs in input order (as
    ``roi_align_rotated_backward`` for one level)."""
    T = grad_output.dtype.type
    grads = [np.zeros(shape, grad_output.dtype) for shape in shapes]
    for k in range(rois.shape[0]):
        level, n = int(levels[k]), int(rois[k, 0])
        g = rotated_geometry(
            rois[k, 1:6], scales[level], pooled_height, pooled_width, sampling_ratio, aligned,
            angle_unit, clockwise, T,
        )  # fmt: skip
        add_roi_gradient(grads[level][n], grad_output[k], g, T)
    return grads


def multi_scale_roi_pool_forward(features, rois, levels, scales, pooled_height, pooled_width):
    """``(output[K, C, PH, PW], argmax[K, C, PH, PW])``: RoI k is RoIPool
    (``roiops.reference.roi_pool``) of ``features[levels[k]]`` at its scale; argmax cells
    are in the RoI's level's plane."""
    channels = features[0].shape[1]
    shape = (rois.shape[0], channels, pooled_height, pooled_width)
    output = np.zeros(shape, features[0].dtype)
    argmax = np.full(shape, -1, np.int32)
    for k in range(rois.shape[0]):
        level = int(levels[k])
        out, arg = roi_pool_forward(
            features[level], rois[k : k + 1], scales[level], pooled_height, pooled_width
        )
        output[k], argmax[k] = out[0], arg[0]
    return output, argmax


def multi_scale_roi_pool_backward(grad_output, rois, levels, argmax, shapes):
    """One gradient per level: each output's gradient at its argmax cell of its level,
    RoIs in input order."""
    grads = [np.zeros(shape, grad_output.dtype) for shape in shapes]
    for k in range(rois.shape[0]):
        level, n = int(levels[k]), int(rois[k, 0])
        width = shapes[level][3]
        for c in range(grad_output.shape[1]):
            for ph in range(grad_output.shape[2]):
                for pw in range(grad_output.shape[3]):
                    cell = argmax[k, c, ph, pw]
                    if cell >= 0:
                        grads[level][n, c, cell // width, cell % width] += grad_output[k, c, ph, pw]
    return grads
