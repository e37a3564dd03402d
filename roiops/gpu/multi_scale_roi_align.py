"""Multi-scale RoIAlign (FPN pooler) in Triton: every pyramid level in one launch.

The forward is ``roi_align_forward_kernel``'s work split (one program per RoI and block
of its outputs); a program first picks its RoI's level (pointer, size, spatial_scale) out
of up to MAX_LEVELS passed side by side, then runs RoIAlign's body (``forward_bins``).
The backward scatters every RoI into its level's part of one fixed-point accumulator
(``backward_bin``; one launch), then converts each level's part into that level's
gradient. A RoI whose level is not in ``[0, L)`` is invalid: NaN outputs, no gradient.
Rotated boxes (detectron2's ``ROIAlignRotated`` pooler) the same way, with rotated
RoIAlign's bodies (``rotated_forward_bins``, ``rotated_backward_bin``).
"""

from __future__ import annotations

import triton.language as tl

from roiops._layout import new_argmax, readable_argmax
from roiops.gpu import roi_align as gpu_align
from roiops.gpu import roi_pool as gpu_pool
from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, fixed_point_scale
from roiops.gpu.launch import Launch
from roiops.gpu.roi_align import backward_bin, forward_bins
from roiops.gpu.roi_align_rotated import rotated_backward_bin, rotated_forward_bins
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
    REUSE_MIN: tl.constexpr = 0,
):  # fmt: skip
    """OUT[K, C, PH, PW]: RoI k pooled from level LEVELS[k] of X0..X4 (NCHW), whose
    sizes are H_l x W_l and spatial_scale the float64 with bits S_l (REUSE, REUSE_MIN:
    ``roiops.gpu.roi_align.reuse_loads``)."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    usable, X = pick_level(LEVELS, k, NUM_LEVELS, X0, X1, X2, X3, X4)
    _, H = pick_level(LEVELS, k, NUM_LEVELS, H0, H1, H2, H3, H4)
    _, W = pick_level(LEVELS, k, NUM_LEVELS, W0, W1, W2, W3, W4)
    _, bits = pick_level(LEVELS, k, NUM_LEVELS, S0, S1, S2, S3, S4)
    forward_bins(X, ROIS, OUT, OUT, k, c, p, ok, N, C, H, W, bits, sampling_ratio, usable,
                 PH, PW, ALIGNED, False, False, BLOCK, REUSE, REUSE_MIN)  # fmt: skip


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
def multi_scale_roi_align_rotated_forward_kernel(
    X0, X1, X2, X3, X4, ROIS, LEVELS, OUT, N, C,
    H0, H1, H2, H3, H4, W0, W1, W2, W3, W4, S0, S1, S2, S3, S4, sampling_ratio,
    NUM_LEVELS: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr,
    DEGREES: tl.constexpr, CLOCKWISE: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW]: rotated RoI k (ROIS[K, 6]) pooled from level LEVELS[k] of
    X0..X4 (NCHW)."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    usable, X = pick_level(LEVELS, k, NUM_LEVELS, X0, X1, X2, X3, X4)
    _, H = pick_level(LEVELS, k, NUM_LEVELS, H0, H1, H2, H3, H4)
    _, W = pick_level(LEVELS, k, NUM_LEVELS, W0, W1, W2, W3, W4)
    _, bits = pick_level(LEVELS, k, NUM_LEVELS, S0, S1, S2, S3, S4)
    rotated_forward_bins(X, ROIS, OUT, k, c, p, ok, N, C, H, W, bits, sampling_ratio, usable,
                         PH, PW, ALIGNED, DEGREES, CLOCKWISE, BLOCK)  # fmt: skip


@kernel
def multi_scale_roi_align_rotated_backward_kernel(
    G, ROIS, LEVELS, AMAX, ACC, N, C,
    H0, H1, H2, H3, H4, W0, W1, W2, W3, W4, S0, S1, S2, S3, S4, O0, O1, O2, O3, O4,
    sampling_ratio, log2_count,
    NUM_LEVELS: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr,
    DEGREES: tl.constexpr, CLOCKWISE: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC (int64; level l's NHWC part starts at element O_l) += the gradient of one
    (rotated RoI, bin, block of channels) from G[K, C, PH, PW]."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    usable, H = pick_level(LEVELS, k, NUM_LEVELS, H0, H1, H2, H3, H4)
    _, W = pick_level(LEVELS, k, NUM_LEVELS, W0, W1, W2, W3, W4)
    _, bits = pick_level(LEVELS, k, NUM_LEVELS, S0, S1, S2, S3, S4)
    _, offset = pick_level(LEVELS, k, NUM_LEVELS, O0, O1, O2, O3, O4)
    rotated_backward_bin(G, ROIS, AMAX, ACC + offset, k, p, c, c_ok, N, C, H, W, bits,
                         sampling_ratio, log2_count, usable, PH, PW, ALIGNED, DEGREES,
                         CLOCKWISE)  # fmt: skip


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
    xs = [f.contiguous() for f in features]
    first = xs[0]
    out = first.new_empty((rois.shape[0], first.shape[1], pooled_h, pooled_w))
    launch = _align_forward_launch(tuple(f.shape for f in xs), first.dtype, first.get_device(),
                                   rois.shape[0], tuple(scales), pooled_h, pooled_w,
                                   sampling_ratio, aligned,
                                   tiles.forward_rois_inner(sampling_ratio <= 0),
                                   *gpu_align.reuse_loads(sampling_ratio))  # fmt: skip
    launch(*per_level(xs, first), rois, levels, out)
    return out


@tiles.cached
def _align_forward_launch(sizes, dtype, device, K, scales, pooled_h, pooled_w, sampling_ratio,
                          aligned, rois_inner, reuse, reuse_min) -> Launch:  # fmt: skip
    """``multi_scale_roi_align_forward``'s launch for levels of ``sizes`` (N, C, H_l, W_l)
    of ``dtype`` on ``device``, K RoIs, these parameters and settings: its tensors
    ``(*levels padded to MAX_LEVELS, rois, levels, out)``."""
    N, C = sizes[0][:2]
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "multi_scale_roi_align",
                                       adaptive=sampling_ratio <= 0)  # fmt: skip
    values = (N, C, *_level_sizes(sizes, scales), sampling_ratio)
    return Launch(multi_scale_roi_align_forward_kernel, grid, values, NUM_LEVELS=len(sizes),
                  PH=pooled_h, PW=pooled_w, ALIGNED=aligned, BLOCK=block, ROIS_INNER=rois_inner,
                  REUSE=reuse, REUSE_MIN=reuse_min, num_warps=num_warps)  # fmt: skip


def _level_sizes(sizes, scales=None, offsets=None) -> list:
    """The kernels' per-level values: every level's H, then every W, then (given) the
    scales' bits and the accumulator offsets, each padded to MAX_LEVELS."""
    values = per_level([s[2] for s in sizes], 0) + per_level([s[3] for s in sizes], 0)
    if scales is not None:
        values += per_level([scale_bits(s) for s in scales], scale_bits(1.0))
    if offsets is not None:
        values += per_level(list(offsets), 0)
    return values


def multi_scale_roi_align_backward(grad, rois, levels, scales, grad_inputs, sampling_ratio,
                                   aligned):  # fmt: skip
    """Write every cell of each ``grad_inputs[l]`` (any strides) for ``grad[K, C, ph, pw]``."""
    sizes = tuple(g.shape for g in grad_inputs)
    sums = Accumulator(grad, *sizes)
    launch = _align_backward_launch(sizes, grad.shape, grad.dtype, grad.get_device(),
                                    tuple(scales), sampling_ratio, aligned, sums.log2_count,
                                    gpu_align.SPAN, tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, levels, sums.amax, sums.flat)
    return [sums.write_to(g, part) for part, g in enumerate(grad_inputs)]


@tiles.cached
def _align_backward_launch(sizes, grad_sizes, dtype, device, scales, sampling_ratio, aligned,
                           log2_count, span, rois_inner) -> Launch:  # fmt: skip
    """``multi_scale_roi_align_backward``'s launch for ``grad`` of ``grad_sizes`` (K, C,
    ph, pw) and ``dtype`` on ``device`` into levels of ``sizes`` (N, C, H_l, W_l), these
    parameters and settings: its tensors ``(grad, rois, levels, amax, acc)``."""
    K, C, pooled_h, pooled_w = grad_sizes
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "multi_scale")
    offsets = Accumulator.offsets_of(sizes)
    values = (sizes[0][0], C, *_level_sizes(sizes, scales, offsets), sampling_ratio, log2_count)
    return Launch(multi_scale_roi_align_backward_kernel, grid, values, NUM_LEVELS=len(sizes),
                  PH=pooled_h, PW=pooled_w, ALIGNED=aligned, BLOCK_C=block_c, SPAN=span,
                  ROIS_INNER=rois_inner, num_warps=num_warps)  # fmt: skip


def multi_scale_roi_align_rotated_forward(features, rois, levels, scales, pooled_h,
                                           pooled_w, sampling_ratio, aligned, degrees,
                                           clockwise):  # fmt: skip
    """``out[K, C, ph, pw]`` for ``features[l][N, C, H_l, W_l]`` (read as NCHW) and
    rotated ``rois[K, 6]``."""
    xs = [f.contiguous() for f in features]
    first = xs[0]
    out = first.new_empty((rois.shape[0], first.shape[1], pooled_h, pooled_w))
    launch = _rotated_forward_launch(tuple(f.shape for f in xs), first.dtype,
                                     first.get_device(), rois.shape[0], tuple(scales),
                                     pooled_h, pooled_w, sampling_ratio, aligned, degrees,
                                     clockwise,
                                     tiles.forward_rois_inner(sampling_ratio <= 0))  # fmt: skip
    launch(*per_level(xs, first), rois, levels, out)
    return out


@tiles.cached
def _rotated_forward_launch(sizes, dtype, device, K, scales, pooled_h, pooled_w,
                            sampling_ratio, aligned, degrees, clockwise,
                            rois_inner) -> Launch:  # fmt: skip
    """``multi_scale_roi_align_rotated_forward``'s launch for levels of ``sizes`` (N, C,
    H_l, W_l) of ``dtype`` on ``device``, K RoIs, these parameters and settings: its
    tensors ``(*levels padded to MAX_LEVELS, rois, levels, out)``."""
    N, C = sizes[0][:2]
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "multi_scale_roi_align_rotated",
                                       adaptive=sampling_ratio <= 0)  # fmt: skip
    values = (N, C, *_level_sizes(sizes, scales), sampling_ratio)
    return Launch(multi_scale_roi_align_rotated_forward_kernel, grid, values,
                  NUM_LEVELS=len(sizes), PH=pooled_h, PW=pooled_w, ALIGNED=aligned,
                  DEGREES=degrees, CLOCKWISE=clockwise, BLOCK=block, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def multi_scale_roi_align_rotated_backward(grad, rois, levels, scales, grad_inputs,
                                           sampling_ratio, aligned, degrees,
                                           clockwise):  # fmt: skip
    """Write every cell of each ``grad_inputs[l]`` (any strides) for ``grad[K, C, ph, pw]``."""
    sizes = tuple(g.shape for g in grad_inputs)
    sums = Accumulator(grad, *sizes)
    launch = _rotated_backward_launch(sizes, grad.shape, grad.dtype, grad.get_device(),
                                      tuple(scales), sampling_ratio, aligned, degrees,
                                      clockwise, sums.log2_count,
                                      tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, levels, sums.amax, sums.flat)
    return [sums.write_to(g, part) for part, g in enumerate(grad_inputs)]


@tiles.cached
def _rotated_backward_launch(sizes, grad_sizes, dtype, device, scales, sampling_ratio, aligned,
                             degrees, clockwise, log2_count, rois_inner) -> Launch:  # fmt: skip
    """``multi_scale_roi_align_rotated_backward``'s launch for ``grad`` of ``grad_sizes``
    (K, C, ph, pw) and ``dtype`` on ``device`` into levels of ``sizes`` (N, C, H_l, W_l),
    these parameters and settings: its tensors ``(grad, rois, levels, amax, acc)``."""
    K, C, pooled_h, pooled_w = grad_sizes
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w,
                                                 "multi_scale_roi_align_rotated")  # fmt: skip
    offsets = Accumulator.offsets_of(sizes)
    values = (sizes[0][0], C, *_level_sizes(sizes, scales, offsets), sampling_ratio, log2_count)
    return Launch(multi_scale_roi_align_rotated_backward_kernel, grid, values,
                  NUM_LEVELS=len(sizes), PH=pooled_h, PW=pooled_w, ALIGNED=aligned,
                  DEGREES=degrees, CLOCKWISE=clockwise, BLOCK_C=block_c, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def multi_scale_roi_pool_forward(features, rois, levels, scales, pooled_h, pooled_w):
    """``(out[K, C, ph, pw], argmax[K, ph, pw, C])`` for ``features[l]`` (read as NCHW)."""
    xs = [f.contiguous() for f in features]
    first = xs[0]
    shape = (rois.shape[0], first.shape[1], pooled_h, pooled_w)
    out = first.new_empty(shape)
    argmax = new_argmax(out, shape, channel_major=True)
    launch = _pool_forward_launch(tuple(f.shape for f in xs), first.dtype, first.get_device(),
                                  rois.shape[0], tuple(scales), pooled_h, pooled_w,
                                  tiles.GATHER_ROIS_INNER, gpu_pool.VISIT_2X2)  # fmt: skip
    launch(*per_level(xs, first), rois, levels, out, argmax)
    return out, argmax


@tiles.cached
def _pool_forward_launch(sizes, dtype, device, K, scales, pooled_h, pooled_w, rois_inner,
                         visit_2x2) -> Launch:  # fmt: skip
    """``multi_scale_roi_pool_forward``'s launch for levels of ``sizes`` (N, C, H_l, W_l)
    of ``dtype`` on ``device``, K RoIs, these parameters and settings: its tensors
    ``(*levels padded to MAX_LEVELS, rois, levels, out, argmax)``."""
    N, C = sizes[0][:2]
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "multi_scale_roi_pool")
    return Launch(multi_scale_roi_pool_forward_kernel, grid,
                  (N, C, *_level_sizes(sizes, scales)), NUM_LEVELS=len(sizes), PH=pooled_h,
                  PW=pooled_w, BLOCK=block, ROIS_INNER=rois_inner, VISIT_2X2=visit_2x2,
                  num_warps=num_warps)  # fmt: skip


def multi_scale_roi_pool_backward(grad, argmax, rois, levels, grad_inputs):
    """Write every cell of each ``grad_inputs[l]`` (any strides) for ``grad[K, C, ph, pw]``."""
    sizes = tuple(g.shape for g in grad_inputs)
    sums = Accumulator(grad, *sizes)
    argmax, channel_major = readable_argmax(argmax)
    launch = _pool_backward_launch(sizes, grad.shape, grad.dtype, grad.get_device(),
                                   sums.log2_count, channel_major,
                                   tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, levels, argmax, sums.amax, sums.flat)
    return [sums.write_to(g, part) for part, g in enumerate(grad_inputs)]


@tiles.cached
def _pool_backward_launch(sizes, grad_sizes, dtype, device, log2_count, channel_major,
                          rois_inner) -> Launch:  # fmt: skip
    """``multi_scale_roi_pool_backward``'s launch for ``grad`` of ``grad_sizes`` (K, C,
    ph, pw) and ``dtype`` on ``device`` into levels of ``sizes`` (N, C, H_l, W_l), these
    parameters and settings: its tensors ``(grad, rois, levels, argmax, amax, acc)``."""
    K, C, pooled_h, pooled_w = grad_sizes
    grid, block_p, block_c, num_warps = roi_channels_grid(K, C, pooled_h * pooled_w,
                                                          "multi_scale")  # fmt: skip
    offsets = Accumulator.offsets_of(sizes)
    return Launch(multi_scale_roi_pool_backward_kernel, grid,
                  (sizes[0][0], C, *_level_sizes(sizes, offsets=offsets), log2_count),
                  NUM_LEVELS=len(sizes), P=pooled_h * pooled_w, BLOCK_P=block_p,
                  BLOCK_C=block_c, ARGMAX_CM=channel_major, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip
