"""RoIPool in Triton: forward (max + argmax) and a deterministic backward.

Same work split as ``roiops.gpu.roi_align``: the forward runs one program per (RoI,
block of its outputs); the backward is a
gather, one program per (image, block of channels, tile of cells), visiting the image's
RoIs that reach the tile in input order and adding each winning gradient of the bins
near the tile to its argmax cell when that cell is in the tile. Quantization follows
``roiops.reference.roi_pool``.
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

# bins start from -FLT_MAX, as in torchvision and the reference
FLT_LOWEST = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def _round_half_away(v):
    """C's round(): halves away from zero."""
    a = tl.abs(v)
    r = tl.floor(a)
    r = tl.where(a - r >= 0.5, r + 1.0, r)
    return tl.where(v < 0, -r, r).to(tl.int32)


@triton.jit
def _quantized_roi(rois_ptr, k, scale_ptr):
    """(n, start_h, start_w, height, width) in whole cells, end cell inclusive."""
    spatial_scale = tl.load(scale_ptr)  # in the rois' dtype, as the reference's T(scale)
    roi = rois_ptr + k * 5
    n = tl.load(roi).to(tl.int64)
    start_w = _round_half_away(tl.load(roi + 1) * spatial_scale)
    start_h = _round_half_away(tl.load(roi + 2) * spatial_scale)
    end_w = _round_half_away(tl.load(roi + 3) * spatial_scale)
    end_h = _round_half_away(tl.load(roi + 4) * spatial_scale)
    height = tl.maximum(end_h - start_h + 1, 1)
    width = tl.maximum(end_w - start_w + 1, 1)
    return n, start_h, start_w, height, width


@triton.jit
def _bin_edges(roi_start, roi_size, p, POOLED: tl.constexpr, limit, DT: tl.constexpr):
    """Cell range [start, end) of bins p along one axis, clipped to [0, limit]."""
    bin_size = roi_size.to(DT) / POOLED
    start = tl.floor(p.to(DT) * bin_size).to(tl.int32) + roi_start
    end = tl.ceil((p + 1).to(DT) * bin_size).to(tl.int32) + roi_start
    return tl.minimum(tl.maximum(start, 0), limit), tl.minimum(tl.maximum(end, 0), limit)


@triton.jit
def roi_pool_forward_kernel(
    X, ROIS, SCALE, OUT, ARGMAX, C, H, W,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr, STORE_ARGMAX: tl.constexpr,
):  # fmt: skip
    """OUT[K, C, PH, PW] and (STORE_ARGMAX) ARGMAX[K, PH, PW, C] (cell h * W + w, or -1)
    from X[N, C, H, W]."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK)
    n, start_h, start_w, roi_h, roi_w = _quantized_roi(ROIS, k, SCALE)
    h0, h1 = _bin_edges(start_h, roi_h, p // PW, PH, H, ROIS.dtype.element_ty)
    w0, w1 = _bin_edges(start_w, roi_w, p % PW, PW, W, ROIS.dtype.element_ty)
    plane = X + (n * C + c.to(tl.int64)) * H * W
    # compared in float32 (float64 for float64 maps), as the reference does for halves
    acc_dtype = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    best = tl.full((BLOCK,), FLT_LOWEST, acc_dtype)
    best_at = tl.full((BLOCK,), -1, tl.int32)
    # the widest bin spans at most ceil(size / pooled) + 1 cells
    span_h = tl.cdiv(roi_h, PH) + 1
    span_w = tl.cdiv(roi_w, PW) + 1
    for dh in range(0, span_h):
        for dw in range(0, span_w):
            h = h0 + dh
            w = w0 + dw
            inside = (h < h1) & (w < w1) & ok
            cell = h * W + w
            v = tl.load(plane + cell, mask=inside, other=0.0).to(best.dtype)
            # row-major visit and strict >: the first maximum wins, as in the reference
            wins = inside & (v > best)
            best = tl.where(wins, v, best)
            best_at = tl.where(wins, cell, best_at)
    empty = (h1 <= h0) | (w1 <= w0)
    # (lanes past the last channel are zeroed too: -FLT_MAX would overflow a half cast)
    best = tl.where(empty | ~ok, 0.0, best)
    store_bins(OUT, ARGMAX, best, best_at, k, c, p, ok, C, PH * PW, STORE_ARGMAX)


@triton.jit
def _reaches_tile(rois_ptr, k, scale_ptr, y0, x0, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Whether the bins of RoIs k can hold cells of the tile at (y0, x0): bins stay inside
    the quantized box (one cell of slack for the ceil)."""
    _, start_h, start_w, roi_h, roi_w = _quantized_roi(rois_ptr, k, scale_ptr)
    return (
        (start_h <= y0 + TILE_H) & (start_h + roi_h + 1 >= y0)
        & (start_w <= x0 + TILE_W) & (start_w + roi_w + 1 >= x0)
    )  # fmt: skip


@triton.jit
def roi_pool_backward_kernel(
    G, ROIS, SCALE, ARGMAX, ORDER, IMAGE_START, GX,
    C, H, W, stride_n, stride_c, stride_h, stride_w, n_channel_blocks, n_tiles_x,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK_C: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """GX[N, C, H, W] (any strides) for one (image, channel block, cell tile)."""
    n, c, c_ok, y0, x0, ys, xs = gradient_tile(C, H, n_channel_blocks, n_tiles_x, BLOCK_C, TILE_H,
                                               TILE_W)  # fmt: skip
    acc_dtype = tl.float64 if G.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros((BLOCK_C, TILE_H, TILE_W), dtype=acc_dtype)
    last = tl.load(IMAGE_START + n + 1)
    for j0 in range(tl.load(IMAGE_START + n), last, BLOCK_R):
        ks, ok = roi_block(ORDER, j0, last, BLOCK_R)
        reach = ok & _reaches_tile(ROIS, ks, SCALE, y0, x0, TILE_H, TILE_W)
        lane = -1
        for _ in range(tl.sum(reach.to(tl.int32), axis=0)):
            lane = next_lane(reach, lane)
            k = tl.load(ORDER + j0 + lane)
            _, start_h, start_w, roi_h, roi_w = _quantized_roi(ROIS, k, SCALE)
            dt = ROIS.dtype.element_ty
            ph_lo, ph_hi = bins_reaching(start_h.to(dt), roi_h.to(dt) / PH, y0, TILE_H, PH)
            pw_lo, pw_hi = bins_reaching(start_w.to(dt), roi_w.to(dt) / PW, x0, TILE_W, PW)
            for ph in range(ph_lo, ph_hi):
                for pw in range(pw_lo, pw_hi):
                    p = ph * PW + pw
                    winner = (k.to(tl.int64) * (PH * PW) + p) * C + c  # int64: K * P * C
                    cell = tl.load(ARGMAX + winner, mask=c_ok, other=-1)
                    g = tl.load(G + (k * C + c.to(tl.int64)) * (PH * PW) + p, mask=c_ok, other=0.0)
                    # -1 (empty bin) and out-of-plane values route nothing
                    g = tl.where((cell >= 0) & (cell < H * W), g.to(acc.dtype), 0.0)
                    hit = (
                        ((ys[None, :] == cell[:, None] // W)[:, :, None])
                        & ((xs[None, :] == cell[:, None] % W)[:, None, :])
                    )
                    acc += tl.where(hit, g[:, None, None], 0.0)
    store_gradient_tile(GX, acc, n, c, c_ok, ys, xs, H, W, stride_n, stride_c, stride_h,
                        stride_w)  # fmt: skip


# ----------------------------------------------------------------------------- launchers
def roi_pool_forward(input, rois, spatial_scale, pooled_h, pooled_w, with_argmax=True):
    """``(out[K, C, ph, pw], argmax[K, ph, pw, C] or None)`` for NCHW ``input``."""
    K, C = rois.shape[0], input.shape[1]
    x = input.contiguous()
    shape = (K, C, pooled_h, pooled_w)
    out = x.new_empty(shape)
    argmax = (
        torch.empty(argmax_shape(*shape), dtype=torch.int32, device=x.device)
        if with_argmax
        else None
    )
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w)
    roi_pool_forward_kernel[grid](
        x, rois, scale_tensor(spatial_scale, rois), out, argmax if with_argmax else out,
        C, x.shape[2], x.shape[3], PH=pooled_h, PW=pooled_w, BLOCK=block,
        STORE_ARGMAX=with_argmax, num_warps=num_warps,
    )  # fmt: skip
    return out, argmax


def roi_pool_backward(grad, rois, argmax, order, image_start, grad_input, spatial_scale):
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``."""
    N, C, H, W = grad_input.shape
    grid, block_c, n_blocks, n_tiles_x, tile, num_warps = gradient_grid(N, C, H, W, "pool")
    roi_pool_backward_kernel[grid](
        grad.contiguous(), rois, scale_tensor(spatial_scale, rois), argmax.contiguous(), order,
        image_start, grad_input, C, H, W, *grad_input.stride(), n_blocks, n_tiles_x,
        PH=grad.shape[2], PW=grad.shape[3], BLOCK_C=block_c, TILE_H=tile, TILE_W=tile,
        BLOCK_R=ROI_BLOCK, num_warps=num_warps,
    )  # fmt: skip
    return grad_input
