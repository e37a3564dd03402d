"""RoIAlign in Triton: forward (avg/max) and a deterministic backward.

Forward: one program per (RoI, block of its outputs); it computes the RoI's geometry once,
loops over the RoI's sampling grid and gathers the four neighbours of every point from
NCHW input for each of its (channel, bin) outputs.

Backward, deterministic by construction (a gather, no atomics): one program per
(image, block of channels, tile of input cells). It owns its tile of the gradient and
visits, in input order, those of the image's RoIs that can reach the tile (tested a block
of RoIs at a time), and within a RoI only the bins near the tile. Average mode is
separable: the gradient a cell (y, x) receives from bin (ph, pw) is
``g[ph, pw] / count * Ay[ph, y] * Ax[pw, x]`` where ``Ay[ph, y]`` is the summed bilinear
row weight that the bin's sampling rows give row y (``Ax`` likewise for columns), so a
RoI's contribution to a tile is ``Ay^T G Ax``, added one bin row at a time. In max mode
each channel's winning sample adds its four weights to the cells that are its neighbours.
Either way every cell is summed by one program in one fixed order, so the gradient is
bitwise reproducible; it is the formulation CUDA kernels avoid because every tile scans
its image's RoI list, and that scan is the price of not using atomicAdd.

Arithmetic follows ``roiops.reference.roi_align`` (same conventions); compute is in
float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from roiops.gpu import scale_tensor
from roiops.gpu.tiles import (
    ROI_BLOCK,
    bins_grid,
    bins_reaching,
    bins_tile,
    gradient_grid,
    gradient_tile,
    next_lane,
    roi_block,
    store_bins,
    store_gradient_tile,
)
from roiops.ops import argmax_shape


@triton.jit
def _roi_geometry(rois_ptr, k, scale_ptr, sampling_ratio, PH: tl.constexpr, PW: tl.constexpr,
                  ALIGNED: tl.constexpr):  # fmt: skip
    """(n, start_h, start_w, bin_h, bin_w, grid_h, grid_w) of RoI k."""
    spatial_scale = tl.load(scale_ptr)  # in the rois' dtype, as the reference's T(scale)
    roi = rois_ptr + k * 5
    n = tl.load(roi).to(tl.int64)
    x1 = tl.load(roi + 1)
    y1 = tl.load(roi + 2)
    x2 = tl.load(roi + 3)
    y2 = tl.load(roi + 4)
    offset = 0.5 if ALIGNED else 0.0
    start_w = x1 * spatial_scale - offset
    start_h = y1 * spatial_scale - offset
    width = (x2 * spatial_scale - offset) - start_w
    height = (y2 * spatial_scale - offset) - start_h
    if not ALIGNED:
        # legacy convention: malformed RoIs are forced to 1x1 cell
        width = tl.maximum(width, 1.0)
        height = tl.maximum(height, 1.0)
    bin_h = height / PH
    bin_w = width / PW
    # adaptive sampling: ceil(bin size) points per axis; negative sizes -> empty grid
    adaptive_h = tl.maximum(tl.ceil(bin_h), 0.0).to(tl.int32)
    adaptive_w = tl.maximum(tl.ceil(bin_w), 0.0).to(tl.int32)
    grid_h = tl.where(sampling_ratio > 0, sampling_ratio, adaptive_h)
    grid_w = tl.where(sampling_ratio > 0, sampling_ratio, adaptive_w)
    return n, start_h, start_w, bin_h, bin_w, grid_h, grid_w


@triton.jit
def _axis_sample(start, bin_size, bin_index, i, grid, limit):
    """(low, high, w_low, w_high, inside) of point i of the bins along one axis."""
    v = (start + bin_index * bin_size) + (i + 0.5) * bin_size / grid
    inside = (v >= -1.0) & (v <= limit)
    v = tl.maximum(v, 0.0)
    low = v.to(tl.int32)
    at_end = low >= limit - 1
    low = tl.where(at_end, limit - 1, low)
    high = tl.where(at_end, limit - 1, low + 1)
    v = tl.where(at_end, low.to(v.dtype), v)
    frac = v - low.to(v.dtype)
    return low, high, 1.0 - frac, frac, inside


@triton.jit
def roi_align_forward_kernel(
    X, ROIS, SCALE, OUT, ARGMAX,
    C, H, W, sampling_ratio,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """OUT[K, C, PH, PW] (and ARGMAX[K, PH, PW, C] in max mode) from X[N, C, H, W]."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK)
    ph = p // PW
    pw = p % PW
    n, start_h, start_w, bin_h, bin_w, gh, gw = _roi_geometry(
        ROIS, k, SCALE, sampling_ratio, PH, PW, ALIGNED
    )
    plane = X + (n * C + c.to(tl.int64)) * H * W
    acc = tl.zeros((BLOCK,), dtype=tl.float32 if X.dtype.element_ty != tl.float64 else tl.float64)
    best_s = tl.full((BLOCK,), -1, tl.int32)
    for iy in range(0, gh):
        y_lo, y_hi, wy_lo, wy_hi, y_in = _axis_sample(start_h, bin_h, ph, iy, gh, H)
        for ix in range(0, gw):
            x_lo, x_hi, wx_lo, wx_hi, x_in = _axis_sample(start_w, bin_w, pw, ix, gw, W)
            inside = y_in & x_in & ok
            row_lo = plane + y_lo * W
            row_hi = plane + y_hi * W
            v = (
                wy_lo * wx_lo * tl.load(row_lo + x_lo, mask=inside, other=0.0).to(acc.dtype)
                + wy_lo * wx_hi * tl.load(row_lo + x_hi, mask=inside, other=0.0).to(acc.dtype)
                + wy_hi * wx_lo * tl.load(row_hi + x_lo, mask=inside, other=0.0).to(acc.dtype)
                + wy_hi * wx_hi * tl.load(row_hi + x_hi, mask=inside, other=0.0).to(acc.dtype)
            )
            v = tl.where(inside, v, 0.0)
            if MAX_MODE:
                # first maximum wins; a sample outside the map takes part with value 0
                s = iy * gw + ix
                wins = (s == 0) | (v > acc)
                acc = tl.where(wins, v, acc)
                best_s = tl.where(wins, s, best_s)
            else:
                acc += v
    if not MAX_MODE:
        acc = acc / tl.maximum(gh * gw, 1).to(acc.dtype)
    store_bins(OUT, ARGMAX, acc, best_s, k, c, p, ok, C, PH * PW, MAX_MODE)


@triton.jit
def _axis_weights(start, bin_size, grid, limit, cells, POOLED: tl.constexpr,
                  POOLED_BLOCK: tl.constexpr):  # fmt: skip
    """A[POOLED_BLOCK, len(cells)]: summed bilinear weight that bin p's sampling points
    along this axis give each cell (0 for points more than one cell outside the map)."""
    p = tl.arange(0, POOLED_BLOCK)
    weights = tl.zeros((POOLED_BLOCK, cells.shape[0]), dtype=start.dtype)
    for i in range(0, grid):
        low, high, w_low, w_high, inside = _axis_sample(start, bin_size, p, i, grid, limit)
        inside = inside & (p < POOLED)
        hit_low = (low[:, None] == cells[None, :]) & inside[:, None]
        hit_high = (high[:, None] == cells[None, :]) & inside[:, None]
        weights += tl.where(hit_low, w_low[:, None], 0.0) + tl.where(hit_high, w_high[:, None], 0.0)
    return weights


@triton.jit
def _reaches_tile(rois_ptr, k, scale_ptr, sampling_ratio, y0, x0, PH: tl.constexpr,
                  PW: tl.constexpr, ALIGNED: tl.constexpr, TILE_H: tl.constexpr,
                  TILE_W: tl.constexpr):  # fmt: skip
    """Whether the sampling points of RoIs k can give gradient to the tile at (y0, x0):
    every cell a point touches lies within one cell of the RoI's span (an inverted aligned
    RoI with a fixed sampling_ratio spans backwards)."""
    _, start_h, start_w, bin_h, bin_w, gh, gw = _roi_geometry(
        rois_ptr, k, scale_ptr, sampling_ratio, PH, PW, ALIGNED
    )
    end_h = start_h + PH * bin_h
    end_w = start_w + PW * bin_w
    return (
        (gh > 0) & (gw > 0)
        & (tl.minimum(start_h, end_h) - 1.0 < y0 + TILE_H)
        & (tl.maximum(start_h, end_h) + 2.0 > y0)
        & (tl.minimum(start_w, end_w) - 1.0 < x0 + TILE_W)
        & (tl.maximum(start_w, end_w) + 2.0 > x0)
    )  # fmt: skip


@triton.jit
def roi_align_backward_kernel(
    G, ROIS, SCALE, ARGMAX, ORDER, IMAGE_START, GX,
    C, H, W, stride_n, stride_c, stride_h, stride_w, sampling_ratio, n_channel_blocks,
    n_tiles_x,
    PH: tl.constexpr, PW: tl.constexpr, ALIGNED: tl.constexpr, MAX_MODE: tl.constexpr,
    BLOCK_C: tl.constexpr, PH_BLOCK: tl.constexpr, PW_BLOCK: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """GX[N, C, H, W] (any strides) for one (image, channel block, cell tile).

    G is [K, C, PH, PW]; ARGMAX (max mode) is [K, PH, PW, C]; ORDER[IMAGE_START[n]:
    IMAGE_START[n + 1]] lists image n's RoIs in input order.
    """
    n, c, c_ok, y0, x0, ys, xs = gradient_tile(C, H, n_channel_blocks, n_tiles_x, BLOCK_C, TILE_H,
                                               TILE_W)  # fmt: skip
    acc_dtype = tl.float64 if G.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_C, TILE_H, TILE_W), dtype=acc_dtype)
    last = tl.load(IMAGE_START + n + 1)
    for j0 in range(tl.load(IMAGE_START + n), last, BLOCK_R):
        ks, ok = roi_block(ORDER, j0, last, BLOCK_R)
        reach = ok & _reaches_tile(ROIS, ks, SCALE, sampling_ratio, y0, x0, PH, PW, ALIGNED,
                                   TILE_H, TILE_W)  # fmt: skip
        lane = -1
        for _ in range(tl.sum(reach.to(tl.int32), axis=0)):
            lane = next_lane(reach, lane)
            k = tl.load(ORDER + j0 + lane)
            _, start_h, start_w, bin_h, bin_w, gh, gw = _roi_geometry(
                ROIS, k, SCALE, sampling_ratio, PH, PW, ALIGNED
            )
            grad = G + (k * C + c.to(tl.int64)) * (PH * PW)
            ph_lo, ph_hi = bins_reaching(start_h, bin_h, y0, TILE_H, PH)
            if MAX_MODE:
                pw_lo, pw_hi = bins_reaching(start_w, bin_w, x0, TILE_W, PW)
                for ph in range(ph_lo, ph_hi):
                    for pw in range(pw_lo, pw_hi):
                        p = ph * PW + pw
                        winner = (k.to(tl.int64) * (PH * PW) + p) * C + c  # int64: K * P * C
                        s = tl.load(ARGMAX + winner, mask=c_ok, other=-1)
                        g = tl.load(grad + p, mask=c_ok, other=0.0).to(acc.dtype)
                        iy = s // tl.maximum(gw, 1)
                        ix = s % tl.maximum(gw, 1)
                        y_lo, y_hi, wy_lo, wy_hi, y_in = _axis_sample(start_h, bin_h, ph, iy, gh, H)
                        x_lo, x_hi, wx_lo, wx_hi, x_in = _axis_sample(start_w, bin_w, pw, ix, gw, W)
                        g = tl.where((s >= 0) & (s < gh * gw) & y_in & x_in, g, 0.0)
                        row_lo = (ys[None, :] == y_lo[:, None])[:, :, None]
                        row_hi = (ys[None, :] == y_hi[:, None])[:, :, None]
                        col_lo = (xs[None, :] == x_lo[:, None])[:, None, :]
                        col_hi = (xs[None, :] == x_hi[:, None])[:, None, :]
                        acc += tl.where(row_lo & col_lo, (g * wy_lo * wx_lo)[:, None, None], 0.0)
                        acc += tl.where(row_lo & col_hi, (g * wy_lo * wx_hi)[:, None, None], 0.0)
                        acc += tl.where(row_hi & col_lo, (g * wy_hi * wx_lo)[:, None, None], 0.0)
                        acc += tl.where(row_hi & col_hi, (g * wy_hi * wx_hi)[:, None, None], 0.0)
            else:
                # separable: tile += sum_ph Ay[ph, y] * (sum_pw G[c, ph, pw] / count * Ax[pw, x]),
                # one bin row at a time, over the rows that reach the tile
                count = tl.maximum(gh * gw, 1).to(acc.dtype)
                a_x = _axis_weights(start_w, bin_w, gw, W, xs, PW, PW_BLOCK)
                a_y = _axis_weights(start_h, bin_h, gh, H, ys, PH, PH_BLOCK)
                rows = tl.arange(0, PH_BLOCK)
                pw = tl.arange(0, PW_BLOCK)
                for ph in range(ph_lo, ph_hi):
                    g = tl.load(grad[:, None] + ph * PW + pw[None, :],
                                mask=c_ok[:, None] & (pw < PW)[None, :], other=0.0)  # fmt: skip
                    # [C, PW] x [PW, TILE_W] -> [C, TILE_W]
                    t = tl.sum((g.to(acc.dtype) / count)[:, :, None] * a_x[None, :, :], axis=1)
                    a_row = tl.sum(tl.where(rows[:, None] == ph, a_y, 0.0), axis=0)
                    acc += a_row[None, :, None] * t[:, None, :]
    store_gradient_tile(GX, acc, n, c, c_ok, ys, xs, H, W, stride_n, stride_c, stride_h,
                        stride_w)  # fmt: skip


# ----------------------------------------------------------------------------- launchers
def roi_align_forward(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned,
                      max_mode):  # fmt: skip
    """``(out[K, C, ph, pw], argmax[K, ph, pw, C] or None)`` for NCHW ``input``."""
    K, C = rois.shape[0], input.shape[1]
    x = input.contiguous()
    shape = (K, C, pooled_h, pooled_w)
    out = x.new_empty(shape)
    # avg mode stores no argmax: the kernel gets ``out`` in its place and never writes it
    argmax = (
        torch.empty(argmax_shape(*shape), dtype=torch.int32, device=x.device) if max_mode else None
    )
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w)
    roi_align_forward_kernel[grid](
        x, rois, scale_tensor(spatial_scale, rois), out, argmax if max_mode else out,
        C, x.shape[2], x.shape[3],
        sampling_ratio, PH=pooled_h, PW=pooled_w, ALIGNED=aligned, MAX_MODE=max_mode,
        BLOCK=block, num_warps=num_warps,
    )  # fmt: skip
    return out, argmax


def roi_align_backward(grad, rois, argmax, order, image_start, grad_input, spatial_scale,
                       pooled_h, pooled_w, sampling_ratio, aligned):  # fmt: skip
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``."""
    N, C, H, W = grad_input.shape
    max_mode = argmax is not None
    grid, block_c, n_blocks, n_tiles_x, tile, num_warps = gradient_grid(
        N, C, H, W, "max" if max_mode else "avg"
    )
    roi_align_backward_kernel[grid](
        grad.contiguous(), rois, scale_tensor(spatial_scale, rois),
        argmax if max_mode else rois, order, image_start, grad_input,
        C, H, W, *grad_input.stride(), sampling_ratio, n_blocks, n_tiles_x,
        PH=pooled_h, PW=pooled_w, ALIGNED=aligned, MAX_MODE=max_mode, BLOCK_C=block_c,
        PH_BLOCK=triton.next_power_of_2(pooled_h), PW_BLOCK=triton.next_power_of_2(pooled_w),
        TILE_H=tile, TILE_W=tile, BLOCK_R=ROI_BLOCK, num_warps=num_warps,
    )  # fmt: skip
    return grad_input
