"""RoIAlign on CPU: Numba kernels, forward and backward, avg and max.

Layout: the kernels read the input channels-last, ``X[N, H, W, C]``, so that the four
neighbours of a sampling point are four contiguous channel vectors and the bilinear
weights (shared by every channel) multiply whole SIMD registers. The innermost loops
run over channels with a run-time trip count, which is what LLVM vectorises (a fixed
trip count of 16 gets fully unrolled into scalar code instead).

* forward: one task per RoI. A task reads its window channel block by channel block
  (a block's window stays in L2), gathers the ``pooled_h * pooled_w`` bins of every
  channel in a small channels-last buffer and writes its ``[C, ph, pw]`` output slice
  once, contiguously.
* backward: one task per (image, channel block). The task visits that image's RoIs in
  their original order and is the only writer of its slice of the gradient, so every
  gradient cell is summed by one thread in one fixed order: results are bitwise
  identical from run to run and for any number of threads (no atomics, no per-thread
  partial buffers to reduce).

Indices are int64 (uint64 where a flat offset is formed, which also spares the inner
loop Numba's negative-index wraparound), so tensors beyond 2**31 elements are fine.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from roiops.cpu.layout import channel_task
from roiops.cpu.parallel import parallel_njit
from roiops.cpu.sampling import (
    bilinear_axis,
    roi_align_geometry,
    roi_sampling_tables,
    sample_corners,
    sample_is_inside,
)

# Forward: channels gathered per pass over a window (4 x 256 float32 = 4 KiB per sample).
FORWARD_BLOCK = 256


@parallel_njit
def roi_align_avg_forward(X, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, out):
    """out[K, C, pooled_h, pooled_w] = mean of the bilinear samples of each bin."""
    K = rois.shape[0]
    C = X.shape[3]
    out_bins = out.reshape(K, C, pooled_h * pooled_w)
    for k in prange(K):
        roi_align_avg_forward_roi(
            X, rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, out_bins[k]
        )


@njit(cache=True)
def roi_align_avg_forward_roi(
    X, rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, out_k
):
    """One RoI's output ``out_k[C, pooled_h * pooled_w]`` (the forward task's work)."""
    _, H, W, C = X.shape
    T = X.dtype.type
    P = pooled_h * pooled_w
    Xf = X.reshape(-1)
    n = int(rois[k, 0])
    gh, gw, rows, cols = roi_sampling_tables(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, H, W
    )
    count = T(max(gh * gw, 1))
    bins = np.zeros((P, C), X.dtype)
    for c0 in range(0, C, FORWARD_BLOCK):
        nc = min(C - c0, FORWARD_BLOCK)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                acc = bins[ph * pooled_w + pw, c0 : c0 + nc]
                for iy in range(gh):
                    for ix in range(gw):
                        if not sample_is_inside(rows, cols, ph, iy, pw, ix):
                            continue
                        w1, w2, w3, w4, o1, o2, o3, o4 = sample_corners(
                            rows, cols, ph, iy, pw, ix, n, H, W, C
                        )
                        o1, o2 = np.uint64(o1 + c0), np.uint64(o2 + c0)
                        o3, o4 = np.uint64(o3 + c0), np.uint64(o4 + c0)
                        for cc in range(nc):
                            u = np.uint64(cc)
                            acc[cc] += (
                                w1 * Xf[o1 + u]
                                + w2 * Xf[o2 + u]
                                + w3 * Xf[o3 + u]
                                + w4 * Xf[o4 + u]
                            )
                for cc in range(nc):
                    acc[cc] = acc[cc] / count
    for c in range(C):
        for b in range(P):
            out_k[c, b] = bins[b, c]


@parallel_njit
def roi_align_max_forward(
    X, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, onnx_max, out, argmax
):
    """out = max over the bilinear samples of each bin; argmax[K, ph, pw, C] = winning
    sample index ``iy * grid_w + ix`` (channels last, like roi_pool's argmax).

    A sample outside the map has value 0 and takes part in the max; the first maximum
    wins; a bin without samples gives 0 and argmax -1. With ``onnx_max``, ONNX's max: of
    the four weighted corner terms of every sample, argmax ``4 * sample + corner``.
    """
    _, H, W, C = X.shape
    K = rois.shape[0]
    P = pooled_h * pooled_w
    Xf = X.reshape(-1)
    out_bins = out.reshape(K, C, P)
    arg_bins = argmax.reshape(K, P, C)
    for k in prange(K):
        n = int(rois[k, 0])
        gh, gw, rows, cols = roi_sampling_tables(
            rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, H, W
        )
        bins = np.zeros((P, C), X.dtype)
        arg_bins[k] = -1
        for c0 in range(0, C, FORWARD_BLOCK):
            nc = min(C - c0, FORWARD_BLOCK)
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    best = bins[ph * pooled_w + pw, c0 : c0 + nc]
                    best_s = arg_bins[k, ph * pooled_w + pw, c0 : c0 + nc]
                    for iy in range(gh):
                        for ix in range(gw):
                            s = np.int32(iy * gw + ix)
                            first = s == 0
                            if onnx_max:
                                s = np.int32(4) * s
                            if not sample_is_inside(rows, cols, ph, iy, pw, ix):
                                for cc in range(nc):
                                    if first or best[cc] < 0:
                                        best[cc] = 0
                                        best_s[cc] = s
                                continue
                            w1, w2, w3, w4, o1, o2, o3, o4 = sample_corners(
                                rows, cols, ph, iy, pw, ix, n, H, W, C
                            )
                            o1, o2 = np.uint64(o1 + c0), np.uint64(o2 + c0)
                            o3, o4 = np.uint64(o3 + c0), np.uint64(o4 + c0)
                            if onnx_max:
                                for cc in range(nc):
                                    u = np.uint64(cc)
                                    v, corner = corner_max(
                                        w1 * Xf[o1 + u], w2 * Xf[o2 + u],
                                        w3 * Xf[o3 + u], w4 * Xf[o4 + u],
                                    )  # fmt: skip
                                    take = first or v > best[cc]
                                    best[cc] = v if take else best[cc]
                                    best_s[cc] = s + corner if take else best_s[cc]
                                continue
                            for cc in range(nc):
                                u = np.uint64(cc)
                                v = (
                                    w1 * Xf[o1 + u]
                                    + w2 * Xf[o2 + u]
                                    + w3 * Xf[o3 + u]
                                    + w4 * Xf[o4 + u]
                                )
                                # both stores unconditional: a select, which vectorises
                                # (a branch did not: 25.7 -> 18.5 ms for 512 boxes of
                                # 16-200 px with sampling_ratio 2, 44.4 -> 28.1 adaptive;
                                # ONNX's max above 24.1 -> 16.9, 35.0 -> 24.1)
                                take = first or v > best[cc]
                                best[cc] = v if take else best[cc]
                                best_s[cc] = s if take else best_s[cc]
        for c in range(C):
            for b in range(P):
                out_bins[k, c, b] = bins[b, c]


@njit(cache=True)
def corner_max(t1, t2, t3, t4):
    """(largest term, its index 0-3), the first of equal ones (ONNX RoiAlign's max)."""
    best, corner = t1, np.int32(0)
    if t2 > best:
        best, corner = t2, np.int32(1)
    if t3 > best:
        best, corner = t3, np.int32(2)
    if t4 > best:
        best, corner = t4, np.int32(3)
    return best, corner


@parallel_njit
def roi_align_avg_backward(
    G,
    rois,
    order,
    image_start,
    spatial_scale,
    pooled_h,
    pooled_w,
    sampling_ratio,
    aligned,
    channel_block,
    GX,
):
    """GX[N, H, W, C] (zeroed) += the avg-mode gradient of G[K, C, pooled_h, pooled_w].

    ``order[image_start[n]:image_start[n + 1]]`` lists image n's RoIs in input order.
    """
    N, C = GX.shape[0], GX.shape[3]
    P = pooled_h * pooled_w
    G_bins = G.reshape(G.shape[0], C, P)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        nc = c1 - c0
        share = np.empty((P, nc), GX.dtype)
        for j in range(image_start[n], image_start[n + 1]):
            roi_align_avg_backward_roi(
                G_bins[order[j]], rois, order[j], spatial_scale, pooled_h, pooled_w,
                sampling_ratio, aligned, c0, share, GX,
            )  # fmt: skip


@njit(cache=True)
def bins_first(G_k, c0, divisor, share):
    """``share[b, cc] = G_k[c0 + cc, b] / divisor``: a RoI's output gradient
    ``G_k[C, P]`` for a backward task's channels, bins first (avg mode divides by the
    sample count; max mode by 1, which changes no bit)."""
    P, nc = share.shape
    for cc in range(nc):
        for b in range(P):
            share[b, cc] = G_k[c0 + cc, b] / divisor


@njit(cache=True)
def roi_align_avg_backward_roi(
    G_k, rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, c0, share, GX
):
    """GX[n, :, :, c0:c0 + nc] += RoI k's gradient from ``G_k[C, pooled_h * pooled_w]``
    (one RoI's share of a backward task; ``share[P, nc]`` is the task's scratch)."""
    _, H, W, C = GX.shape
    T = GX.dtype.type
    nc = share.shape[1]
    GXf = GX.reshape(-1)
    n = int(rois[k, 0])
    gh, gw, rows, cols = roi_sampling_tables(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, H, W
    )
    bins_first(G_k, c0, T(max(gh * gw, 1)), share)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            g = share[ph * pooled_w + pw]
            for iy in range(gh):
                for ix in range(gw):
                    if not sample_is_inside(rows, cols, ph, iy, pw, ix):
                        continue
                    w1, w2, w3, w4, o1, o2, o3, o4 = sample_corners(
                        rows, cols, ph, iy, pw, ix, n, H, W, C
                    )
                    # four separate passes: corners coincide at the border, and each
                    # must add in the reference's order
                    o = np.uint64(o1 + c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w1
                    o = np.uint64(o2 + c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w2
                    o = np.uint64(o3 + c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w3
                    o = np.uint64(o4 + c0)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w4


# max-mode backward: in a bin of at most MASKED_SAMPLES sampling points, each point adds
# its share to all of a task's channels at once, masked to the channels whose maximum it
# is (whole-vector adds; a masked-out channel adds -0.0, which leaves every value as it
# is, -0.0 included); in a larger bin, channel by channel, each to its winning point.
# Channel by channel everywhere before (2026-11-28, this project's 2-core VM, minima of
# 15 interleaved rounds, [2, 256, 100, 136] float32 at stride 8, 512 boxes): 81.7 -> 27.8
# ms for 16-200 px boxes with sampling_ratio 2, 77.0 -> 33.3 adaptive, 72.0 -> 14.9 for
# 8-64 px adaptive, the same bits; 100-800 px adaptive (up to 15x15 points a bin) stays
# at 129 (4 or 16 points instead of 9: within 15% either way on the others)
MASKED_SAMPLES = 9


@parallel_njit
def roi_align_max_backward(
    G,
    argmax,
    rois,
    order,
    image_start,
    spatial_scale,
    pooled_h,
    pooled_w,
    sampling_ratio,
    aligned,
    onnx_max,
    channel_block,
    GX,
):
    """GX[N, H, W, C] (zeroed) += the max-mode gradient: only the winning sample passes
    (with ``onnx_max``, only the winning corner of the winning sample)."""
    N, C = GX.shape[0], GX.shape[3]
    P = pooled_h * pooled_w
    G_bins = G.reshape(G.shape[0], C, P)
    won_bins = argmax.reshape(argmax.shape[0], P, C)
    n_blocks = (C + channel_block - 1) // channel_block
    for task in prange(N * n_blocks):
        n, c0, c1 = channel_task(task, n_blocks, channel_block, C)
        share = np.empty((P, c1 - c0), GX.dtype)
        for j in range(image_start[n], image_start[n + 1]):
            k = order[j]
            roi_align_max_backward_roi(
                G_bins[k], won_bins[k], rois, k, spatial_scale, pooled_h, pooled_w,
                sampling_ratio, aligned, onnx_max, c0, share, GX,
            )  # fmt: skip


@njit(cache=True)
def roi_align_max_backward_roi(G_k, won_k, rois, k, spatial_scale, pooled_h, pooled_w,
                               sampling_ratio, aligned, onnx_max, c0, share, GX):  # fmt: skip
    """GX[n, :, :, c0:c0 + nc] += RoI k's max-mode gradient from ``G_k[C, P]`` and its
    winners ``won_k[P, C]`` (one RoI's share of a backward task; ``share[P, nc]`` is the
    task's scratch)."""
    _, H, W, C = GX.shape
    T = GX.dtype.type
    nc = share.shape[1]
    GXf = GX.reshape(-1)
    n = int(rois[k, 0])
    gh, gw, rows, cols = roi_sampling_tables(
        rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, H, W
    )
    bins_first(G_k, c0, T(1), share)
    # the code of corner i of sample s in the argmax: s, or 4 * s + i for ONNX's max
    per_sample, per_corner = (4, 1) if onnx_max else (1, 0)
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            g = share[ph * pooled_w + pw]
            won = won_k[ph * pooled_w + pw, c0 : c0 + nc]
            if gh * gw > MASKED_SAMPLES:
                add_to_winners(g, won, rows, cols, ph, pw, gh, gw, n, c0, onnx_max, GX)
                continue
            for iy in range(gh):
                for ix in range(gw):
                    if not sample_is_inside(rows, cols, ph, iy, pw, ix):
                        continue
                    s = np.int32(per_sample * (iy * gw + ix))
                    w1, w2, w3, w4, o1, o2, o3, o4 = sample_corners(
                        rows, cols, ph, iy, pw, ix, n, H, W, C
                    )
                    # four passes in the reference's order: corners coincide at the border
                    # (written out: as calls of one helper, 15% slower on this VM)
                    o, code = np.uint64(o1 + c0), s
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w1 if won[cc] == code else T(-0.0)
                    o, code = np.uint64(o2 + c0), s + np.int32(per_corner)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w2 if won[cc] == code else T(-0.0)
                    o, code = np.uint64(o3 + c0), s + np.int32(2 * per_corner)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w3 if won[cc] == code else T(-0.0)
                    o, code = np.uint64(o4 + c0), s + np.int32(3 * per_corner)
                    for cc in range(nc):
                        GXf[o + np.uint64(cc)] += g[cc] * w4 if won[cc] == code else T(-0.0)


@njit(cache=True)
def add_to_winners(g, won, rows, cols, ph, pw, gh, gw, n, c0, onnx_max, GX):
    """GX[n, :, :, c0 + cc] += each channel's gradient ``g[cc]`` of bin (ph, pw) at its
    winning sample ``won[cc]`` (with ``onnx_max``, at its winning corner alone)."""
    _, H, W, C = GX.shape
    GXf = GX.reshape(-1)
    for cc in range(g.shape[0]):
        c = c0 + cc
        s = won[cc]
        corner = -1  # all four
        if onnx_max and s >= 0:
            corner = s % 4
            s = s // 4
        # an index no forward could produce (reachable only by calling the backward op
        # by hand) is ignored, never read out of bounds
        if s < 0 or s >= gh * gw:
            continue
        iy = s // gw
        ix = s - iy * gw
        if not sample_is_inside(rows, cols, ph, iy, pw, ix):
            continue
        w1, w2, w3, w4, o1, o2, o3, o4 = sample_corners(rows, cols, ph, iy, pw, ix, n, H, W, C)
        u = np.uint64(c)
        if corner < 0 or corner == 0:
            GXf[np.uint64(o1) + u] += g[cc] * w1
        if corner < 0 or corner == 1:
            GXf[np.uint64(o2) + u] += g[cc] * w2
        if corner < 0 or corner == 2:
            GXf[np.uint64(o3) + u] += g[cc] * w3
        if corner < 0 or corner == 3:
            GXf[np.uint64(o4) + u] += g[cc] * w4


@parallel_njit
def roi_align_box_backward(
    G, X, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, max_mode, argmax,
    grad_boxes,
):  # fmt: skip
    """grad_boxes[K, 5] = the gradient w.r.t. the boxes (column 0 stays 0): the output
    gradient times the bilinear surface's slope at each sampling point times how the
    point moves with each edge (``roiops.reference.roi_align.roi_align_box_backward``).
    One task per RoI, its own row: deterministic. argmax[K, ph, pw, C] in max mode."""
    _, H, W, C = X.shape
    K = rois.shape[0]
    T = X.dtype.type
    Xf = X.reshape(-1)
    for k in prange(K):
        n = int(rois[k, 0])
        start_h, start_w, bin_h, bin_w, gh, gw = roi_align_geometry(
            rois, k, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned
        )
        scale = T(spatial_scale)
        count = T(max(gh * gw, 1))
        # legacy boxes under one cell are forced to 1x1: their size does not move
        moves_h = aligned or rois[k, 4] * scale - rois[k, 2] * scale > 1
        moves_w = aligned or rois[k, 3] * scale - rois[k, 1] * scale > 1
        gx1 = gy1 = gx2 = gy2 = T(0)
        for ph in range(pooled_h):
            for iy in range(gh):
                y = (start_h + T(ph) * bin_h) + T(iy + 0.5) * bin_h / T(gh)
                t_y = (T(ph) + T(iy + 0.5) / T(gh)) / T(pooled_h)
                for pw in range(pooled_w):
                    for ix in range(gw):
                        x = (start_w + T(pw) * bin_w) + T(ix + 0.5) * bin_w / T(gw)
                        if not (y >= -1.0 and y <= H and x >= -1.0 and x <= W):
                            continue
                        t_x = (T(pw) + T(ix + 0.5) / T(gw)) / T(pooled_w)
                        y_lo, y_hi, _, ly = bilinear_axis(y, H, T)
                        x_lo, x_hi, _, lx = bilinear_axis(x, W, T)
                        # the value is flat in y where y is clamped (start or end of the map)
                        flat_y = y <= 0 or y_lo == y_hi
                        flat_x = x <= 0 or x_lo == x_hi
                        o1 = ((n * H + y_lo) * W + x_lo) * C
                        o2 = ((n * H + y_lo) * W + x_hi) * C
                        o3 = ((n * H + y_hi) * W + x_lo) * C
                        o4 = ((n * H + y_hi) * W + x_hi) * C
                        s = iy * gw + ix
                        gy = T(0)
                        gx = T(0)
                        for c in range(C):
                            if max_mode:
                                if argmax[k, ph, pw, c] != s:
                                    continue
                                share = G[k, c, ph, pw]
                            else:
                                share = G[k, c, ph, pw] / count
                            v1, v2 = Xf[o1 + c], Xf[o2 + c]
                            v3, v4 = Xf[o3 + c], Xf[o4 + c]
                            if not flat_y:
                                gy += share * ((T(1) - lx) * (v3 - v1) + lx * (v4 - v2))
                            if not flat_x:
                                gx += share * ((T(1) - ly) * (v2 - v1) + ly * (v4 - v3))
                        gy *= scale
                        gx *= scale
                        gy1 += gy * (T(1) - t_y) if moves_h else gy
                        gy2 += gy * t_y if moves_h else T(0)
                        gx1 += gx * (T(1) - t_x) if moves_w else gx
                        gx2 += gx * t_x if moves_w else T(0)
        grad_boxes[k, 0] = 0
        grad_boxes[k, 1] = gx1
        grad_boxes[k, 2] = gy1
        grad_boxes[k, 3] = gx2
        grad_boxes[k, 4] = gy2
