"""The work splits the Triton kernels share.

Forward: one program per (RoI, block of BLOCK consecutive outputs of that RoI), outputs
numbered ``q = c * PH * PW + p`` as they lie in ``OUT[K, C, PH, PW]``: no lane is padding
(a [channels, bins] tile would pad 49 bins to 64), neighbouring lanes sample neighbouring
bins of one channel, and the store is contiguous (``ARGMAX[K, PH, PW, C]`` is strided).

Backward: one program per (image, block of channels, TILE x TILE cells): it owns that
tile of the gradient ``GX[N, C, H, W]`` (any strides), accumulates into registers, and
stores once. It finds the RoIs that reach its tile ROI_BLOCK at a time (one vector test
per block instead of one scalar test per RoI) and visits those in input order.
"""

from __future__ import annotations

import triton
import triton.language as tl

TILE = 8
BLOCK_C = 16  # backward
# Backward warps per program, from ptxas's register counts for sm_90 (not from timings):
# with [16, 8, 8] tiles the average-mode kernel uses 64 registers per thread on 4 warps;
# the max-mode and roi_pool kernels (per-channel winners) use ~108 and ~64 on 8 warps;
# on 4 warps they reached 145 and 121, or spilled. (These counts move by 20 with small
# changes: a 2-D grid put the max-mode kernel at 128.)
BACKWARD_WARPS = {"avg": 4, "max": 8, "pool": 8}
ROI_BLOCK = 32  # RoIs tested against a gradient tile at once
# Forward programs hold this many outputs, 2 per thread on 8 warps. Chosen from ptxas's
# register counts for sm_90 (not from timings): 2 outputs per thread take 48-54
# registers (room for 32-40 warps per SM), 4 take 72-97, and the first version's
# [32, 64] tiles on 4 warps (16 per thread) ~180, which left room for only 8 warps per SM
# on a kernel whose time goes into waiting for gathered loads.
FORWARD_BLOCK = 512
FORWARD_PER_THREAD = 2


def bins_grid(num_rois: int, channels: int, pooled_h: int, pooled_w: int):
    """``(grid, block, num_warps)`` for a forward launch: a 1-D grid (CUDA caps the
    second and third grid dimensions at 65535)."""
    outputs = channels * pooled_h * pooled_w
    block = min(FORWARD_BLOCK, triton.next_power_of_2(outputs))
    num_warps = min(max(block // (32 * FORWARD_PER_THREAD), 1), 8)
    return (num_rois * triton.cdiv(outputs, block),), block, num_warps


@triton.jit
def bins_tile(C, P: tl.constexpr, BLOCK: tl.constexpr):
    """(k, c, p, ok): this program's RoI and, per lane, channel and flattened bin.

    Lanes count from the block's first channel, found in int64: C * P may pass 2**31."""
    blocks = tl.cdiv(C * P, BLOCK)
    k = tl.program_id(0) // blocks
    first = (tl.program_id(0) % blocks).to(tl.int64) * BLOCK
    lane = (first % P).to(tl.int32) + tl.arange(0, BLOCK)
    c = (first // P).to(tl.int32) + lane // P
    return k, c, lane % P, c < C


@triton.jit
def store_bins(OUT, ARGMAX, values, argmax, k, c, p, ok, C, P: tl.constexpr,
               STORE_ARGMAX: tl.constexpr):  # fmt: skip
    """OUT[k, c, p] = values; ARGMAX[k, p, c] = argmax (int64 offsets)."""
    tl.store(OUT + (k * C + c.to(tl.int64)) * P + p, values.to(OUT.dtype.element_ty), mask=ok)
    if STORE_ARGMAX:
        tl.store(ARGMAX + (k.to(tl.int64) * P + p) * C + c, argmax, mask=ok)


def gradient_grid(batch_size: int, channels: int, height: int, width: int, mode: str):
    """``(grid, block_c, n_channel_blocks, n_tiles_x, tile, num_warps)`` for a backward
    launch; ``mode`` is "avg", "max" or "pool"."""
    block_c = min(BLOCK_C, triton.next_power_of_2(channels))
    n_blocks = triton.cdiv(channels, block_c)
    n_tiles_x = triton.cdiv(width, TILE)
    # a 1-D grid: CUDA caps the second and third grid dimensions at 65535 (a 2048 x 2048
    # map has 65536 tiles)
    grid = (triton.cdiv(height, TILE) * n_tiles_x * batch_size * n_blocks,)
    # small channel blocks (few channels) need fewer threads
    num_warps = max(1, BACKWARD_WARPS[mode] * block_c // BLOCK_C)
    return grid, block_c, n_blocks, n_tiles_x, TILE, num_warps


@triton.jit
def gradient_tile(C, H, n_channel_blocks, n_tiles_x, BLOCK_C: tl.constexpr,
                  TILE_H: tl.constexpr, TILE_W: tl.constexpr):  # fmt: skip
    """(n, c, c_ok, y0, x0, ys, xs): this program's image, channels and cell tile."""
    n_tiles = tl.cdiv(H, TILE_H) * n_tiles_x
    tile = tl.program_id(0) % n_tiles
    n = (tl.program_id(0) // n_tiles) // n_channel_blocks
    c = ((tl.program_id(0) // n_tiles) % n_channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    y0 = (tile // n_tiles_x) * TILE_H
    x0 = (tile % n_tiles_x) * TILE_W
    return n, c, c < C, y0, x0, y0 + tl.arange(0, TILE_H), x0 + tl.arange(0, TILE_W)


@triton.jit
def store_gradient_tile(GX, acc, n, c, c_ok, ys, xs, H, W, stride_n, stride_c, stride_h,
                        stride_w):  # fmt: skip
    """GX[n, c, ys, xs] = acc[c, ys, xs] by GX's strides (int64 offsets), inside the map."""
    rows = n.to(tl.int64) * stride_n + ys.to(tl.int64) * stride_h
    cells = rows[:, None] + xs.to(tl.int64)[None, :] * stride_w
    dst = GX + cells[None, :, :] + c.to(tl.int64)[:, None, None] * stride_c
    ok = c_ok[:, None, None] & (ys < H)[None, :, None] & (xs < W)[None, None, :]
    tl.store(dst, acc.to(GX.dtype.element_ty), mask=ok)


@triton.jit
def roi_block(ORDER, j0, end, BLOCK_R: tl.constexpr):
    """(ks, ok): RoI indices ``ORDER[j0:j0 + BLOCK_R]``; lanes at or past ``end`` hold RoI 0
    (a valid index, so vector loads of their geometry stay in bounds) and are not ok."""
    j = j0 + tl.arange(0, BLOCK_R)
    ok = j < end
    return tl.load(ORDER + j, mask=ok, other=0), ok


@triton.jit
def next_lane(mask, after):
    """The first lane after ``after`` whose mask is set (the caller knows there is one)."""
    lane = tl.arange(0, mask.shape[0])
    return tl.min(tl.where(mask & (lane > after), lane, mask.shape[0]), axis=0)


@triton.jit
def bins_reaching(start, size, t0, T: tl.constexpr, POOLED: tl.constexpr):
    """[lo, hi): a range of bins along one axis holding every bin whose cells can fall in
    [t0, t0 + T). Bin p spans [start + p * size, start + (p + 1) * size] and its cells
    (bilinear neighbours or pooled cells) lie within two cells of that span; one more bin
    on either side absorbs rounding. Non-positive sizes give all bins."""
    lo = tl.floor((t0 - 2.0 - start) / size) - 1.0
    hi = tl.ceil((t0 + T + 2.0 - start) / size) + 1.0
    lo = tl.where(size > 0, tl.minimum(tl.maximum(lo, 0.0), POOLED), 0.0)
    hi = tl.where(size > 0, tl.minimum(tl.maximum(hi, 0.0), POOLED), POOLED)
    return lo.to(tl.int32), hi.to(tl.int32)
