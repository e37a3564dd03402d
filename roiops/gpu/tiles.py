"""The work splits the Triton kernels share.

Forward: one program per (RoI, block of channels) holding all of the RoI's bins for
those channels as a ``[BLOCK_C, BLOCK_P]`` tile, stored once into ``OUT[K, C, PH, PW]``
(and ``ARGMAX[K, PH, PW, C]``).

Backward: one program per (image, block of channels, TILE x TILE cells): it owns that
tile of the channels-last gradient ``GX[N, H, W, C]``, accumulates into registers, and
stores once.
"""

from __future__ import annotations

import triton
import triton.language as tl

TILE = 8
BLOCK_C = 16  # backward
FORWARD_BLOCK_C = 32


def bins_grid(num_rois: int, channels: int, pooled_h: int, pooled_w: int):
    """``(grid, block_c, block_p)`` for a forward launch."""
    block_c = min(FORWARD_BLOCK_C, triton.next_power_of_2(channels))
    block_p = triton.next_power_of_2(pooled_h * pooled_w)
    return (num_rois, triton.cdiv(channels, block_c)), block_c, block_p


@triton.jit
def bins_tile(C, P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """(k, c, c_ok, p, p_ok): this program's RoI, channels and (flattened) bins."""
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.arange(0, BLOCK_P)
    return tl.program_id(0), c, c < C, p, p < P


@triton.jit
def store_bins(OUT, ARGMAX, values, argmax, k, c, c_ok, p, p_ok, C, P: tl.constexpr,
               STORE_ARGMAX: tl.constexpr):  # fmt: skip
    """OUT[k, c, p] = values[c, p]; ARGMAX[k, p, c] = argmax[c, p] (int64 offsets)."""
    mask = c_ok[:, None] & p_ok[None, :]
    out = OUT + (k * C + c.to(tl.int64))[:, None] * P + p[None, :]
    tl.store(out, values.to(OUT.dtype.element_ty), mask=mask)
    if STORE_ARGMAX:
        arg = ARGMAX + (k * P + p.to(tl.int64))[None, :] * C + c[:, None]
        tl.store(arg, argmax, mask=mask)


def gradient_grid(batch_size: int, channels: int, height: int, width: int):
    """``(grid, block_c, n_channel_blocks, n_tiles_x, tile)`` for a backward launch."""
    block_c = min(BLOCK_C, triton.next_power_of_2(channels))
    n_blocks = triton.cdiv(channels, block_c)
    n_tiles_x = triton.cdiv(width, TILE)
    grid = (batch_size * n_blocks, triton.cdiv(height, TILE) * n_tiles_x)
    return grid, block_c, n_blocks, n_tiles_x, TILE


@triton.jit
def gradient_tile(C, n_channel_blocks, n_tiles_x, BLOCK_C: tl.constexpr,
                  TILE_H: tl.constexpr, TILE_W: tl.constexpr):  # fmt: skip
    """(n, c, c_ok, y0, x0, ys, xs): this program's image, channels and cell tile."""
    n = tl.program_id(0) // n_channel_blocks
    c = (tl.program_id(0) % n_channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    y0 = (tl.program_id(1) // n_tiles_x) * TILE_H
    x0 = (tl.program_id(1) % n_tiles_x) * TILE_W
    return n, c, c < C, y0, x0, y0 + tl.arange(0, TILE_H), x0 + tl.arange(0, TILE_W)


@triton.jit
def store_gradient_tile(GX, acc, n, c, c_ok, ys, xs, C, H, W):
    """GX[n, ys, xs, c] = acc[c, ys, xs] (int64 offsets), inside the map only."""
    cells = (n * H + ys[:, None]).to(tl.int64) * W + xs[None, :]
    dst = GX + cells[None, :, :] * C + c[:, None, None]
    ok = c_ok[:, None, None] & (ys < H)[None, :, None] & (xs < W)[None, None, :]
    tl.store(dst, acc.to(GX.dtype.element_ty), mask=ok)
