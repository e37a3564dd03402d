"""Multi-scale RoIAlign (FPN pooler) in Triton: every pyramid level in one launch.

The forward is ``roi_align_forward_kernel``'s work split (one program per RoI and block
of its outputs); a program first picks its RoI's level (pointer, size, spatial_scale) out
of up to MAX_LEVELS passed side by side, then runs RoIAlign's body (``forward_bins``).
The backward scatters every RoI into its level's part of one fixed-point accumulator
(``backward_bin``; one launch), then converts each level's part into that level's
gradient. A RoI whose level is not in ``[0, L)`` is invalid: NaN outputs, no gradient.
"""

from __future__ import annotations

import triton.language as tl

from roiops._layout import new_argmax, readable_argmax
from roiops.gpu import roi_align as gpu_align
from roiops.gpu import roi_pool as gpu_pool
from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, fixed_point_scale
from roiops.gpu.roi_align import SPAN, backward_bin, forward_bins
from roiops.gpu.roi_pool import pool_bins, scatter_to_argmax
from roiops.gpu.rois import batch_index, scale_bits
from roiops.gpu.tiles import (
    bin_channels_grid,
    bin_channels_tile,
    bins_grid,
    bins_tile,
    kernel,
    per_level,
    pick_level,
    roi_channels_grid,
    roi_channels_tile,
)


@kernel
def multi_scale_roi_align_forward_kernel(
    X0, X1, X2, X3, X4, ROIS, LEVELS, OUT, N, C,
    H0, H1, H2, H3, H4, W0, W1, W2, W3, W4, S0, S1, S2, S3, S4, sampling_ratio,
    NUM_LEVELS: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False, REUSE: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW]: RoI k pooled from level LEVELS[k] of X0..X4 (NCHW), whose
    sizes are H_l x W_l and spatial_scale the float64 with bits S_l (REUSE:
    ``roiops.gpu.roi_align.REUSE_LOADS``)."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    usable, X = pick_level(LEVELS, k, NUM_LEVELS, X0, X1, X2, X3, X4)
    _, H = pick_level(LEVELS, k, NUM_LEVELS, H0, H1, H2, H3, H4)
    _, W = pick_level(LEVELS, k, NUM_LEVELS, W0, W1, W2, W3, W4)
    _, bits = pick_level(LEVELS, k, NUM_LEVELS, S0, S1, S2, S3, S4)
    forward_bins(X, ROIS, OUT, OUT, k, c, p, ok, N, C, H, W, bits, sampling_ratio, usable,
                 PH, PW, ALIGNED, False, False, BLOCK, REUSE)  # fmt: skip


@kernel
def multi_scale_roi_align_backward_kernel(
    G, ROIS, LEVELS, AMAX, ACC, N, C,
    H0, H1, H2, H3, H4, W0, W1, W2, W3, W4, S0, S1, S2, S3, S4, O0, O1, O2, O3, O4,
    sampling_ratio, log2_count,
    NUM_LEVELS: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr,
    BLOCK_C: tl.constexpr, SPAN: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC (int64; level l's NHWC part starts at element O_l) += the gradient of one
    (RoI, bin, block of channels) from G[K, C, PH, PW]."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    usable, H = pick_level(LEVELS, k, NUM_LEVELS, H0, H1, H2, H3, H4)
    _, W = pick_level(LEVELS, k, NUM_LEVELS, W0, W1, W2, W3, W4)
    _, bits = pick_level(LEVELS, k, NUM_LEVELS, S0, S1, S2, S3, S4)
    _, offset = pick_level(LEVELS, k, NUM_LEVELS, O0, O1, O2, O3, O4)
    backward_bin(G, ROIS, ROIS, AMAX, ACC + offset, k, p, c, c_ok, N, C, H, W, bits,
                 sampling_ratio, log2_count, usable, PH, PW, ALIGNED, False, False,
                 SPAN, True)  # fmt: skip


@kernel
def multi_scale_roi_pool_forward_kernel(
    X0, X1, X2, X3, X4, ROIS, LEVELS, OUT, ARGMAX, N, C,
    H0, H1, H2, H3, H4, W0, W1, W2, W3, W4, S0, S1, S2, S3, S4,
    NUM_LEVELS: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False, VISIT_2X2: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] and ARGMAX[K, PH, PW, C] (channel-major): RoI k max-pooled from
    its level (VISIT_2X2: ``roiops.gpu.roi_pool.VISIT_2X2``)."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    usable, X = pick_level(LEVELS, k, NUM_LEVELS, X0, X1, X2, X3, X4)
    _, H = pick_level(LEVELS, k, NUM_LEVELS, H0, H1, H2, H3, H4)
    _, W = pick_level(LEVELS, k, NUM_LEVELS, W0, W1, W2, W3, W4)
    _, bits = pick_level(LEVELS, k, NUM_LEVELS, S0, S1, S2, S3, S4)
    pool_bins(X, ROIS, OUT, ARGMAX, k, c, p, ok, N, C, H, W, bits, usable, PH, PW, BLOCK, True,
              VISIT_2X2)  # fmt: skip


@kernel
def multi_scale_roi_pool_backward_kernel(
    G, ROIS, LEVELS, ARGMAX, AMAX, ACC, N, C,
    H0, H1, H2, H3, H4, W0, W1, W2, W3, W4, O0, O1, O2, O3, O4, log2_count,
    NUM_LEVELS: tl.constexpr, P: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ARGMAX_CM: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC (int64; level l's NHWC part at element O_l) += G[k, c, p] at each channel's
    argmax cell of RoI k's level (ARGMAX[K, P, C], channel-major if ARGMAX_CM), for one
    RoI and block of channels, all of its bins."""
    k, c, c_ok = roi_channels_tile(C, BLOCK_C, ROIS_INNER)
    usable, H = pick_level(LEVELS, k, NUM_LEVELS, H0, H1, H2, H3, H4)
    _, W = pick_level(LEVELS, k, NUM_LEVELS, W0, W1, W2, W3, W4)
    _, offset = pick_level(LEVELS, k, NUM_LEVELS, O0, O1, O2, O3, O4)
    n, valid = batch_index(ROIS, k, N, 5)
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    scatter_to_argmax(G, ARGMAX, ACC + offset + n * H * W * C, k, c, c_ok, valid & usable, C,
                      H * W, scale, P, BLOCK_P, ARGMAX_CM)  # fmt: skip


# ----------------------------------------------------------------------------- launchers
def multi_scale_roi_align_forward(features, rois, levels, scales, pooled_h, pooled_w,
                                  sampling_ratio, aligned):  # fmt: skip
    """``out[K, C, ph, pw]`` for ``features[l][N, C, H_l, W_l]`` (read as NCHW)."""
    K = rois.shape[0]
    N, C = features[0].shape[:2]
    xs = [f.contiguous() for f in features]
    out = xs[0].new_empty((K, C, pooled_h, pooled_w))
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "multi_scale_roi_align",
                                       adaptive=sampling_ratio <= 0)  # fmt: skip
    multi_scale_roi_align_forward_kernel[grid](
        *per_level(xs, xs[0]), rois, levels, out, N, C,
        *per_level([f.shape[2] for f in xs], 0), *per_level([f.shape[3] for f in xs], 0),
        *per_level([scale_bits(s) for s in scales], scale_bits(1.0)), sampling_ratio,
        NUM_LEVELS=len(xs), PH=pooled_h, PW=pooled_w, ALIGNED=aligned, BLOCK=block,
        ROIS_INNER=tiles.forward_rois_inner(sampling_ratio <= 0), REUSE=gpu_align.REUSE_LOADS,
        num_warps=num_warps,
    )  # fmt: skip
    return out


def multi_scale_roi_align_backward(grad, rois, levels, scales, grad_inputs, sampling_ratio,
                                   aligned):  # fmt: skip
    """Write every cell of each ``grad_inputs[l]`` (any strides) for ``grad[K, C, ph, pw]``."""
    K, C, pooled_h, pooled_w = grad.shape
    N = grad_inputs[0].shape[0]
    sums = Accumulator(grad, *(g.shape for g in grad_inputs))
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "multi_scale")
    multi_scale_roi_align_backward_kernel[grid](
        grad.contiguous(), rois, levels, sums.amax, sums.flat, N, C,
        *per_level([g.shape[2] for g in grad_inputs], 0),
        *per_level([g.shape[3] for g in grad_inputs], 0),
        *per_level([scale_bits(s) for s in scales], scale_bits(1.0)),
        *per_level(sums.offsets, 0), sampling_ratio, sums.log2_count,
        NUM_LEVELS=len(grad_inputs), PH=pooled_h, PW=pooled_w, ALIGNED=aligned,
        BLOCK_C=block_c, SPAN=SPAN, ROIS_INNER=tiles.SCATTER_ROIS_INNER, num_warps=num_warps,
    )  # fmt: skip
    return [sums.write_to(g, part) for part, g in enumerate(grad_inputs)]


def multi_scale_roi_pool_forward(features, rois, levels, scales, pooled_h, pooled_w):
    """``(out[K, C, ph, pw], argmax[K, ph, pw, C])`` for ``features[l]`` (read as NCHW)."""
    K = rois.shape[0]
    N, C = features[0].shape[:2]
    xs = [f.contiguous() for f in features]
    out = xs[0].new_empty((K, C, pooled_h, pooled_w))
    argmax = new_argmax(out, (K, C, pooled_h, pooled_w), channel_major=True)
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "multi_scale_roi_pool")
    multi_scale_roi_pool_forward_kernel[grid](
        *per_level(xs, xs[0]), rois, levels, out, argmax, N, C,
        *per_level([f.shape[2] for f in xs], 0), *per_level([f.shape[3] for f in xs], 0),
        *per_level([scale_bits(s) for s in scales], scale_bits(1.0)),
        NUM_LEVELS=len(xs), PH=pooled_h, PW=pooled_w, BLOCK=block,
        ROIS_INNER=tiles.GATHER_ROIS_INNER, VISIT_2X2=gpu_pool.VISIT_2X2, num_warps=num_warps,
    )  # fmt: skip
    return out, argmax


def multi_scale_roi_pool_backward(grad, argmax, rois, levels, grad_inputs):
    """Write every cell of each ``grad_inputs[l]`` (any strides) for ``grad[K, C, ph, pw]``."""
    K, C, pooled_h, pooled_w = grad.shape
    N = grad_inputs[0].shape[0]
    sums = Accumulator(grad, *(g.shape for g in grad_inputs))
    grid, block_p, block_c, num_warps = roi_channels_grid(K, C, pooled_h * pooled_w,
                                                          "multi_scale")  # fmt: skip
    argmax, channel_major = readable_argmax(argmax)
    multi_scale_roi_pool_backward_kernel[grid](
        grad.contiguous(), rois, levels, argmax, sums.amax, sums.flat, N, C,
        *per_level([g.shape[2] for g in grad_inputs], 0),
        *per_level([g.shape[3] for g in grad_inputs], 0),
        *per_level(sums.offsets, 0), sums.log2_count,
        NUM_LEVELS=len(grad_inputs), P=pooled_h * pooled_w, BLOCK_P=block_p, BLOCK_C=block_c,
        ARGMAX_CM=channel_major, ROIS_INNER=tiles.SCATTER_ROIS_INNER, num_warps=num_warps,
    )  # fmt: skip
    return [sums.write_to(g, part) for part, g in enumerate(grad_inputs)]
