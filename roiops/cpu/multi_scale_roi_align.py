"""Multi-scale RoIAlign (FPN pooler) on CPU: every level in one Numba launch.

The levels arrive as a tuple of channels-last arrays (``X_l[N, H_l, W_l, C]``); each
RoI is pooled from its own level by RoIAlign's per-RoI forward
(``roiops.cpu.roi_align.roi_align_avg_forward_roi``): one task per RoI, whatever its
level. Backward: one task per (image, channel block) owns that slice of *every* level's
gradient and visits the image's RoIs in input order, each adding into its level
(``roi_align_avg_backward_roi``): bitwise reproducible, as for one level.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from roiops.cpu.layout import channel_task
from roiops.cpu.parallel import parallel_njit
from roiops.cpu.roi_align import roi_align_avg_backward_roi, roi_align_avg_forward_roi
from roiops.cpu.roi_align_rotated import (
    roi_align_rotated_backward_roi,
    roi_align_rotated_forward_roi,
)
from roiops.cpu.roi_pool import roi_pool_backward_roi, roi_pool_forward_roi


@parallel_njit
def multi_scale_roi_align_forward(
    features, rois, levels, scales, pooled_h, pooled_w, sampling_ratio, aligned, out
):
    """out[K, C, pooled_h, pooled_w]: RoI k pooled from ``features[levels[k]]``."""
    K, C = out.shape[0], out.shape[1]
    out_bins = out.reshape(K, C, pooled_h * pooled_w)
    for k in prange(K):
        level = levels[k]
        roi_align_avg_forward_roi(
            features[level], rois, k, scales[level], pooled_h, pooled_w, sampling_ratio,
            aligned, out_bins[k],
        )  # fmt: skip


@parallel_njit
def multi_scale_roi_align_backward(
    G, rois, levels, order, image_start, scales, pooled_h, pooled_w, sampling_ratio, aligned,
    channel_block, grads,
):  # fmt: skip
    """grads[l][N, H_l, W_l, C] (zeroed) += the gradient of G[K, C, pooled_h, pooled_w]."""
    N = image_start.shape[0] - 1
    C = G.shape[1]
    P = pooled_h * pooled_w
    G_bins = G.reshape(G.shape[0], C, P)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        share = np.empty((P, c1 - c0), G.dtype)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            level = levels[k]
            roi_align_avg_backward_roi(
                G_bins[k], rois, k, scales[level], pooled_h, pooled_w, sampling_ratio,
                aligned, c0, share, grads[level],
            )  # fmt: skip


@parallel_njit
def multi_scale_roi_pool_forward(features, rois, levels, scales, pooled_h, pooled_w, out, argmax):
    """out[K, C, pooled_h, pooled_w] and argmax[K, pooled_h, pooled_w, C] (cells of each
    RoI's level): RoI k max-pooled from ``features[levels[k]]``."""
    K, C = out.shape[0], out.shape[1]
    P = pooled_h * pooled_w
    out_bins = out.reshape(K, C, P)
    arg_bins = argmax.reshape(K, P, C)
    for k in prange(K):
        level = levels[k]
        roi_pool_forward_roi(
            features[level], rois, k, scales[level], pooled_h, pooled_w, out_bins[k], arg_bins[k]
        )


@parallel_njit
def multi_scale_roi_pool_backward(G, argmax, rois, levels, order, image_start, channel_block,
                                  grads):  # fmt: skip
    """grads[l][N, H_l, W_l, C] (zeroed) += each output's gradient at its argmax cell."""
    N = image_start.shape[0] - 1
    K, C = G.shape[0], G.shape[1]
    P = G.shape[2] * G.shape[3]
    G_bins = G.reshape(K, C, P)
    arg_bins = argmax.reshape(K, P, C)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            GX = grads[levels[k]]
            roi_pool_backward_roi(
                G_bins[k], arg_bins[k], n, c0, c1, GX.reshape(-1), GX.shape[1] * GX.shape[2], C
            )


@parallel_njit
def multi_scale_roi_align_rotated_forward(
    features, rois, levels, scales, pooled_h, pooled_w, sampling_ratio, aligned, degrees,
    clockwise, out,
):  # fmt: skip
    """out[K, C, pooled_h, pooled_w]: rotated RoI k pooled from ``features[levels[k]]``."""
    K, C = out.shape[0], out.shape[1]
    out_bins = out.reshape(K, C, pooled_h * pooled_w)
    for k in prange(K):
        level = levels[k]
        roi_align_rotated_forward_roi(
            features[level], rois, k, scales[level], pooled_h, pooled_w, sampling_ratio,
            aligned, degrees, clockwise, out_bins[k],
        )  # fmt: skip


@parallel_njit
def multi_scale_roi_align_rotated_backward(
    G, rois, levels, order, image_start, scales, pooled_h, pooled_w, sampling_ratio, aligned,
    degrees, clockwise, channel_block, grads,
):  # fmt: skip
    """grads[l][N, H_l, W_l, C] (zeroed) += the gradient of G[K, C, pooled_h, pooled_w]."""
    N = image_start.shape[0] - 1
    C = G.shape[1]
    G_bins = G.reshape(G.shape[0], C, pooled_h * pooled_w)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            level = levels[k]
            roi_align_rotated_backward_roi(
                G_bins[k], rois, k, scales[level], pooled_h, pooled_w, sampling_ratio,
                aligned, degrees, clockwise, c0, c1, grads[level],
            )  # fmt: skip
