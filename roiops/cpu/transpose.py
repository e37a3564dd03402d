"""NCHW -> NHWC for feature maps whose planes are a multiple of 4 KiB apart.

torch's permute-copy reads many channel planes at once; when the plane stride is a
multiple of 4 KiB (64x64, 128x128, ... float32 maps) all those read streams fall into the
same cache sets and 4K-alias, and the copy runs 2-3x slower than at other sizes
(measured here: 8.6 ms vs 3.6 ms for a [1, 256, 128, 128] map). This kernel reads 8
planes at a time, within the associativity of the caches. At other sizes torch's copy is
faster and is used instead (see ``roiops.cpu.layout.channels_last_array``).
"""

from __future__ import annotations

from numba import njit, prange

PLANES_PER_TILE = 8
COLUMNS_PER_TILE = 16


@njit(parallel=True, cache=True)
def nchw_to_nhwc(x, out):
    """out[n, h, w, c] = x[n, c, h, w]; parallel over rows."""
    N, C, H, W = x.shape
    for task in prange(N * H):
        n = task // H
        h = task - n * H
        for c0 in range(0, C, PLANES_PER_TILE):
            c1 = min(C, c0 + PLANES_PER_TILE)
            for w0 in range(0, W, COLUMNS_PER_TILE):
                w1 = min(W, w0 + COLUMNS_PER_TILE)
                for w in range(w0, w1):
                    for c in range(c0, c1):
                        out[n, h, w, c] = x[n, c, h, w]
