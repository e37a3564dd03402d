"""The backward's deterministic accumulator: 64-bit fixed point, summed by integer atomics.

A RoI op's backward scatters: many outputs (bins of overlapping RoIs, neighbouring bins
of one RoI) add into the same input cell. Float atomics add in whatever order the
threads arrive, and float addition is not associative, so the gradient changes from run
to run (torchvision's CUDA kernels do this). Integer addition is associative: every
contribution is converted to a 64-bit integer ``round_toward_zero(v * 2**e)`` and added
with ``atomic_add`` on int64, so the sum is the same whatever the order, and a final pass
converts ``acc * 2**-e`` to the gradient's dtype. This is how molecular dynamics codes
such as OpenMM make their force sums reproducible.

Choosing ``e`` (on the device, no host synchronisation): a cell of channel c receives
contributions only from the ``count = K * PH * PW`` outputs of channel c, and each output
gives its cells at most ``|g|`` in all (one output's bilinear weights, or its one argmax,
sum to at most 1). With ``amax = max |g| < 2**E`` (read off the float's exponent bits) and
``count <= 2**L``, every partial sum stays under ``2**(E + L + e)``; ``e = 62 - E - L``
keeps it under ``2**62``, half of int64's range, so no sum can overflow. The resolution is
then ``2**-e = 2**(E + L - 62)``: with 1000 RoIs of 7x7 bins (L = 16) a contribution is
exact to ``2**-46`` of the largest gradient, far below float32's rounding for any cell
within ``2**-22`` of the largest. A non-finite gradient (NaN or inf anywhere) makes the
whole input gradient NaN: fixed point cannot carry it to the cells it reaches, and a
NaN gradient is what AMP's GradScaler looks for to skip a step.

The accumulator is NHWC, ``int64[N, H, W, C]``: the backward kernels' lanes are channels,
so the atomics of a warp land on consecutive addresses.

Its fixed cost is memory traffic over the whole map: zeroing (8 bytes a cell and
channel), then the conversion (8 read, 4 written), against the 4 bytes of a float
gradient's zero fill. Where the RoIs cover a small part of the maps (small boxes on a
large map, the finest level of a feature pyramid) that dominated the backward. So a
backward given the RoIs first marks, one byte per cell, every cell that any RoI's
gradient can reach (``mark_reach_kernel``: the box scaled to its map, with half a cell
before it, a cell after it for the bilinear neighbour, and a little rounding slack: a
bound that holds for every op here), zeroes the accumulator at the marked cells only,
and the conversion reads it only there, writing zeros elsewhere: ``4 + 16 f`` bytes a
cell and channel for a marked fraction ``f``, instead of 20. A cell outside the mark is
never added to, so the result is the same bits as with the whole accumulator zeroed (tested).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from roiops.gpu.rois import batch_index, is_finite, scale_bits
from roiops.gpu.tiles import check_grid, kernel, per_level, pick_level

# the conversion's tile: cells of one row x channels
CONVERT_CELLS = 32
CONVERT_CHANNELS = 32
# the marking's tile (rows x cells of a row), and the zeroing's (cells x channels)
MARK_ROWS = 8
MARK_CELLS = 64
ZERO_ELEMENTS = 1024
ZERO_CHANNELS = 128


@triton.jit
def _exponent_bound(AMAX):
    """(E, finite): ``amax < 2**E`` exactly, from the exponent bits of ``AMAX[0]`` (>= 0,
    float32 or float64)."""
    a = tl.load(AMAX)
    if a.dtype == tl.float64:
        field = ((a.to(tl.int64, bitcast=True) >> 52) & 0x7FF).to(tl.int32)
        bound = field - 1022
        finite = field != 0x7FF
    else:
        field = (a.to(tl.int32, bitcast=True) >> 23) & 0xFF
        bound = field - 126
        finite = field != 0xFF
    return bound, finite


@triton.jit
def _power_of_two(e):
    """2**e as a float64, exactly (-1022 <= e <= 1023), built from its bits."""
    return ((e.to(tl.int64) + 1023) << 52).to(tl.float64, bitcast=True)


@triton.jit
def fixed_point_scale(AMAX, log2_count):
    """(2**e, 2**-e, finite) for gradients bounded by ``AMAX[0]`` and summed over at most
    ``2**log2_count`` outputs per cell."""
    bound, finite = _exponent_bound(AMAX)
    e = tl.minimum(tl.maximum(62 - bound - log2_count, -1000), 1000)
    return _power_of_two(e), _power_of_two(-e), finite


@triton.jit
def to_fixed(v, scale):
    """``v * scale`` rounded toward zero to int64 (the product is exact in float64)."""
    return (v.to(tl.float64) * scale).to(tl.int64)


@triton.jit
def add_to_cell(CHANNELS, cell, C, value, scale, mask):
    """ACC[n, cell, c] += value in fixed point, with ``CHANNELS = ACC + n * H * W * C + c``
    (a block of channels of image n in the NHWC accumulator); zeros add nothing."""
    tl.atomic_add(CHANNELS + cell * C, to_fixed(value, scale), mask=mask & (value != 0),
                  sem="relaxed")  # fmt: skip


@triton.jit
def _reach(lo, hi, limit):
    """[first, last]: the cells ``floor(lo)`` to ``floor(hi) + 1`` (a point's cell and
    its bilinear neighbour) of an axis of ``limit`` cells, clipped to it (first > last:
    none), with ``lo`` and ``hi`` moved out by more than the float rounding of the
    kernels' own coordinate arithmetic (a few ulps of the larger end). Clamped in floats
    first, so that any finite coordinate converts to int32 safely."""
    slack = (tl.abs(lo) + tl.abs(hi)) * (2.0**-18) + 2.0**-10
    lo = tl.minimum(tl.maximum(lo - slack, -1.0), limit + 1.0)
    hi = tl.minimum(tl.maximum(hi + slack, -2.0), limit + 1.0)
    first = tl.maximum(tl.floor(lo).to(tl.int32), 0)
    last = tl.minimum(tl.floor(hi).to(tl.int32) + 1, limit - 1)
    return first, last


@kernel
def mark_reach_kernel(
    ROIS, LEVELS, FLAGS, N,
    H0, H1, H2, H3, H4, W0, W1, W2, W3, W4, S0, S1, S2, S3, S4, F0, F1, F2, F3, F4,
    COLUMNS: tl.constexpr, NUM_LEVELS: tl.constexpr, LEVELED: tl.constexpr,
    ROWS: tl.constexpr, CELLS: tl.constexpr,
):  # fmt: skip
    """FLAGS[F_l + (n * H_l + h) * W_l + w] = 1 for every cell (h, w) of image n's map l
    that RoI k's backward can add to (one program per RoI). RoIs are rows of 5
    (batch, x1, y1, x2, y2) or, rotated, of 6 (batch, cx, cy, w, h, angle); ``LEVELED``:
    RoI k's map is ``LEVELS[k]`` (else map 0), whose spatial_scale is the float64 with
    bits S_l.

    The bound along x (y likewise), with ``x1s = x1 * spatial_scale`` as the kernels
    compute it: every point or cell a backward uses lies in ``[min(x1s, x2s) - 0.5,
    max(x1s, x2s, x1s + 1)]``: roi_align's sampling points (aligned shifts them by half
    a cell; the legacy mode makes a box at least a cell wide from x1), roi_pool's and
    ps_roi_pool's bins (corners rounded half away from zero; ps_roi_pool's at least a
    cell wide) and prroi_pool's integration windows; a rotated box lies within
    ``max(|w|, 1) / 2 + max(|h|, 1) / 2`` of its (shifted) centre along either axis,
    whatever its angle. ``_reach`` adds the bilinear neighbour and the rounding slack.
    A RoI whose batch index is invalid or whose level is out of range sends no gradient
    and marks nothing; one with non-finite coordinates sends none either, but marks its
    whole map (the bound needs no such promise)."""
    k = tl.program_id(0)
    n, ok = batch_index(ROIS, k, N, COLUMNS)
    if LEVELED:
        usable, H = pick_level(LEVELS, k, NUM_LEVELS, H0, H1, H2, H3, H4)
        _, W = pick_level(LEVELS, k, NUM_LEVELS, W0, W1, W2, W3, W4)
        _, bits = pick_level(LEVELS, k, NUM_LEVELS, S0, S1, S2, S3, S4)
        _, offset = pick_level(LEVELS, k, NUM_LEVELS, F0, F1, F2, F3, F4)
        ok = ok & usable
    else:
        H = H0
        W = W0
        bits = S0
        offset = F0
    scale = bits.to(tl.float64, bitcast=True).to(ROIS.dtype.element_ty)
    roi = ROIS + k.to(tl.int64) * COLUMNS
    a = tl.load(roi + 1) * scale
    b = tl.load(roi + 2) * scale
    c = tl.load(roi + 3) * scale
    d = tl.load(roi + 4) * scale
    finite = is_finite(a) & is_finite(b) & is_finite(c) & is_finite(d)
    if COLUMNS == 6:  # centre (a, b), size (c, d)
        half = (tl.maximum(tl.abs(c), 1.0) + tl.maximum(tl.abs(d), 1.0)) * 0.5
        x_lo = a - 0.5 - half
        x_hi = a + half
        y_lo = b - 0.5 - half
        y_hi = b + half
    else:  # corners (a, b), (c, d)
        x_lo = tl.minimum(a, c) - 0.5
        x_hi = tl.maximum(tl.maximum(a, c), a + 1.0)
        y_lo = tl.minimum(b, d) - 0.5
        y_hi = tl.maximum(tl.maximum(b, d), b + 1.0)
    finite = finite & is_finite(x_lo) & is_finite(x_hi) & is_finite(y_lo) & is_finite(y_hi)
    first_w, last_w = _reach(tl.where(finite, x_lo, -1.0), tl.where(finite, x_hi, W + 1.0), W)
    first_h, last_h = _reach(tl.where(finite, y_lo, -1.0), tl.where(finite, y_hi, H + 1.0), H)
    last_h = tl.where(ok, last_h, first_h - 1)
    image = FLAGS + offset + n * H * W
    rows = tl.arange(0, ROWS)[:, None]
    cells = tl.arange(0, CELLS)[None, :]
    for h0 in range(first_h, last_h + 1, ROWS):
        for w0 in range(first_w, last_w + 1, CELLS):
            h = h0 + rows
            w = w0 + cells
            tl.store(image + h * W + w, tl.full((ROWS, CELLS), 1, tl.int8),
                     mask=(h <= last_h) & (w <= last_w))  # fmt: skip


@kernel
def zero_reached_kernel(ACC, FLAGS, cells, C, BLOCK_CELLS: tl.constexpr, BLOCK_C: tl.constexpr):
    """ACC[cell, c] = 0 (the int64 NHWC accumulator, ``cells`` cells of C channels) for
    every marked cell; one program per (block of cells, block of channels)."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    first = (tl.program_id(0) // c_blocks).to(tl.int64) * BLOCK_CELLS
    cell = first + tl.arange(0, BLOCK_CELLS)
    c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    marked = tl.load(FLAGS + cell, mask=cell < cells, other=0) != 0
    tl.store(ACC + cell[:, None] * C + c[None, :], tl.zeros((BLOCK_CELLS, BLOCK_C), tl.int64),
             mask=marked[:, None] & (c < C)[None, :])  # fmt: skip


@kernel
def fixed_point_to_float_kernel(
    ACC, FLAGS, AMAX, GX, H, W, C, log2_count, stride_n, stride_c, stride_h, stride_w,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, MARKED: tl.constexpr,
):  # fmt: skip
    """GX[n, c, h, w] (any strides) = ACC[n, h, w, c] * 2**-e, or NaN if a gradient was
    not finite. One program per (row (n, h), block of BLOCK_W cells of it, block of
    BLOCK_C channels): the tile is read along channels and written along the row, so
    that with NCHW strides (``stride_w`` 1, which Triton specialises on) both sides are
    coalesced and Triton transposes the tile through shared memory. (A tile of cells
    numbered across rows hides the row's contiguity behind a ``% W``: each warp then
    stored one cell's 32 channels into 32 planes, a sector each.) ``MARKED``: ACC is read
    only at the cells FLAGS[n, h, w] marks (the rest of it was never zeroed), and the
    other cells convert a zero."""
    w_blocks = tl.cdiv(W, BLOCK_W)
    c_blocks = tl.cdiv(C, BLOCK_C)
    row = tl.program_id(0) // (w_blocks * c_blocks)  # n * H + h
    rest = tl.program_id(0) % (w_blocks * c_blocks)
    w = (rest // c_blocks) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = (rest % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (w < W)[:, None] & (c < C)[None, :]
    cells = row.to(tl.int64) * W + w
    if MARKED:
        marked = tl.load(FLAGS + cells, mask=w < W, other=0) != 0
        read = ok & marked[:, None]
    else:
        read = ok
    acc = tl.load(ACC + cells[:, None] * C + c[None, :], mask=read, other=0)
    _, inverse, finite = fixed_point_scale(AMAX, log2_count)
    value = acc.to(tl.float64) * tl.where(finite, inverse, float("nan"))
    if GX.dtype.element_ty != tl.float64:
        # half precision is rounded from float32, as the other backends round it
        value = value.to(tl.float32)
    n = row // H
    h = row % H
    start = n.to(tl.int64) * stride_n + h.to(tl.int64) * stride_h
    # int64 throughout: a channels_last gradient's w * stride_w is w * C
    at = start + w.to(tl.int64)[:, None] * stride_w + c.to(tl.int64)[None, :] * stride_c
    tl.store(GX + at, value.to(GX.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- launchers
def max_abs(grad: torch.Tensor) -> torch.Tensor:
    """``max |grad|`` as a 0-d float32 tensor (float64 for float64), on the device: the
    bound the fixed-point scale is chosen from. A max is exact in any order, so the scale
    does not depend on how threads are scheduled."""
    wide = torch.float64 if grad.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(grad, float("inf"), dtype=wide)


class Accumulator:
    """One backward's fixed-point sums, for one input or several (the levels of a feature
    pyramid): ``parts[i]`` (int64 NHWC views of one buffer ``flat``, part i at element
    ``offsets[i]``), ``amax`` (a 0-d tensor on the device, ``max |grad|``) and
    ``log2_count``, as the scatter kernels take them; ``acc`` is ``parts[0]``.

    Given the backward's ``rois`` (and ``scales``, one spatial_scale per part, and for
    several parts the RoIs' ``levels``), only the cells those RoIs can reach are zeroed
    (``flags``, one byte a cell: see the module's docstring); without, all of them."""

    def __init__(self, grad: torch.Tensor, *input_shapes, rois=None, scales=(), levels=None):
        k, _, ph, pw = grad.shape
        cells = [n * h * w for n, _, h, w in input_shapes]
        sizes = [n * h * w * c for n, c, h, w in input_shapes]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.cell_offsets = [sum(cells[:i]) for i in range(len(cells))]
        self.channels = input_shapes[0][1]
        device = grad.device
        self.flat = torch.empty(sum(sizes), dtype=torch.int64, device=device)
        self.flags = None
        if rois is not None:
            self.flags = torch.empty(sum(cells), dtype=torch.int8, device=device)
            self._reach = (rois, list(scales), levels, input_shapes)
        self.clear()
        self.parts = [
            self.flat[o : o + size].view(n, h, w, c)
            for o, size, (n, c, h, w) in zip(self.offsets, sizes, input_shapes, strict=True)
        ]
        self.acc = self.parts[0]
        self.amax = max_abs(grad)
        self.log2_count = max(k * ph * pw - 1, 0).bit_length()  # ceil(log2(count))

    def clear(self) -> None:
        """Zero the sums where the RoIs reach (all of them without RoIs)."""
        if self.flags is None:
            self.flat.zero_()
            return
        self.flags.zero_()
        rois, scales, levels, shapes = self._reach
        K = rois.shape[0]
        if K == 0 or self.flags.numel() == 0:
            return
        mark_reach_kernel[(K,)](
            rois, rois if levels is None else levels, self.flags, shapes[0][0],
            *per_level([s[2] for s in shapes], 0), *per_level([s[3] for s in shapes], 0),
            *per_level([scale_bits(s) for s in scales], scale_bits(1.0)),
            *per_level(self.cell_offsets, 0), COLUMNS=rois.shape[1],
            NUM_LEVELS=len(shapes), LEVELED=levels is not None, ROWS=MARK_ROWS,
            CELLS=MARK_CELLS, num_warps=4,
        )  # fmt: skip
        block_c = min(ZERO_CHANNELS, triton.next_power_of_2(self.channels))
        block_cells = ZERO_ELEMENTS // block_c
        cell_blocks = triton.cdiv(self.flags.numel(), block_cells)
        programs = cell_blocks * triton.cdiv(self.channels, block_c)
        zero_reached_kernel[check_grid(programs, "backward")](
            self.flat, self.flags, self.flags.numel(), self.channels,
            BLOCK_CELLS=block_cells, BLOCK_C=block_c, num_warps=4,
        )  # fmt: skip

    def write_to(self, grad_input: torch.Tensor, part: int = 0) -> torch.Tensor:
        """Convert sum ``part`` into ``grad_input[N, C, H, W]`` (any strides); every cell
        is written."""
        n, c, h, w = grad_input.shape
        if n * h * w == 0 or c == 0:
            return grad_input
        marked = self.flags is not None
        flags = self.flags[self.cell_offsets[part] :] if marked else self.flat
        grid = (n * h * triton.cdiv(w, CONVERT_CELLS) * triton.cdiv(c, CONVERT_CHANNELS),)
        fixed_point_to_float_kernel[grid](
            self.parts[part], flags, self.amax, grad_input, h, w, c, self.log2_count,
            *grad_input.stride(), BLOCK_W=CONVERT_CELLS, BLOCK_C=CONVERT_CHANNELS,
            MARKED=marked, num_warps=4,
        )  # fmt: skip
        return grad_input
