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
so the atomics of a warp land on consecutive addresses. For position-sensitive pooling
(R-FCN), where output channel c's bin p adds into input channel ``c * P + p``, a (RoI,
bin) program's lanes over output channels would land ``P`` channels apart, a sector each
(8 x 49 bytes apart at 7x7); there the accumulator's channels go bin by bin (``bins``
= P: input channel ``c * P + p`` at ``p * C_out + c``), so they land side by side, and
the conversion puts them back.

Its fixed cost is memory traffic over the whole map: zeroing (8 bytes a cell and
channel), then the conversion (8 read, 4 written), against the 4 bytes of a float
gradient's zero fill. ``Regions`` cut it where the RoIs reach a small part of the map
(zeroing and converting only there; roi_pool and roi_align, behind their ``REGIONS``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from roiops.gpu.launch import Launch
from roiops.gpu.rois import scale_bits
from roiops.gpu.tiles import cached, cdiv, check_grid, kernel, next_power_of_2

# max |grad| comes in AMAX_PARTS pieces, from the first AMAX_PARTS programs of the launch
# that zeroes the accumulator (``zero_and_bound_kernel``), each the max over every
# AMAX_PARTS-th block of ``amax_block`` gradients; a kernel that needs the bound loads them
# all (``_exponent_bound``). One launch where ``torch.zeros`` and
# ``torch.linalg.vector_norm`` took two, its gradient read beside the zeroing. 128
# programs of 32 KB of loads at a time (8192 gradients, 4096 in float64) keep ~4 MB in
# flight, about what an H100's bandwidth needs for a gradient larger than the map; the
# zeroing programs store 32 KB each (sm_90, 8 warps: 80 registers a thread, float64's 101
# on Triton 3.6; 4096 float32 gradients a round took 52, 8192 float64 ones 163)
AMAX_PARTS = tl.constexpr(128)
AMAX_BLOCK = 8192
# From this many gradients on, torch's two calls zero the accumulator and take max |grad|
# (``flat.zero_()``, ``torch.linalg.vector_norm(grad, inf)``, a float the kernels read as
# ``_exponent_bound`` says) instead of ``zero_and_bound_kernel``: each timed alone with its
# launch and a synchronisation on an H100 (``make gpu-tune``'s ``backward_passes``), the
# two calls took 0.147 / 0.155 / 0.152 / 0.322 / 0.152 / 0.132 ms on the bench's roi_align
# 'a small sr=0' / 'a small sr=2' / 'b sr=2' / FPN and roi_pool 'a small' / 'b' cases
# (12.5M-51M gradients) against 0.189 / 0.201 / 0.190 / 0.354 / 0.197 / 0.161 for the one
# launch (089668d; 6686912 alike), but 0.070 / 0.088 against 0.060 / 0.066 on R-FCN's
# (617K gradients), where the host's second launch shows; the GPU's time back to back was
# within 0.01 ms either way. The same max, so the same scale and the same bits
TORCH_BOUND_GRADIENTS = 1 << 22
ZERO_BLOCK = 4096
ZERO_WARPS = 8
# the conversion's tile: cells of one row x channels
CONVERT_CELLS = 32
CONVERT_CHANNELS = 32
# the conversion of sums scattered as differences: a whole row's cells x channels, at most
# BAND_TILE elements and 32 channels (sm_90, 8 warps, compiled as launched, 16-byte
# aligned: 80 registers a thread on Triton 3.8, 114 on 3.6, for 64 to 256 cells a row;
# unaligned it took 128, and a tile of 128 x 32 194); a row of more than BAND_TILE cells
# cannot be scattered so (``Accumulator.takes_bands``)
BAND_TILE = 2048
# sums in regions (``Regions``): the regions kernels' programs, each a piece of the
# areas' sum and largest (and of the flags' zeroing, FLAG_BLOCK bytes a round); the
# regions are zeroed where their areas sum to at most 1 / REGION_SUM_SHARE of the
# accumulator's cells and the largest to 1 / REGION_LARGEST_SHARE (so that no program
# zeroes much more than a whole-map program would: a region's rows go to REGION_ROWS
# programs a block of REGION_CHANNELS channels, REGION_CELLS cells of a row a round),
# else the whole accumulator, by WHOLE_PROGRAMS programs (fewer on a map of fewer blocks)
REGION_PARTS = tl.constexpr(16)
REGION_ROIS = 256
FLAG_BLOCK = tl.constexpr(4096)
REGION_SUM_SHARE = 2
REGION_LARGEST_SHARE = 16
REGION_ROWS = 4
REGION_CHANNELS = 128
REGION_CELLS = 8
WHOLE_PROGRAMS = 2048


@triton.jit
def _exponent_bound(AMAX):
    """(E, finite): ``amax < 2**E`` exactly, from the exponent bits of max |grad|, whose
    AMAX_PARTS pieces ``AMAX`` holds as the bits of float32 magnitudes (int32), or of
    float64 ones (int64): a magnitude's bits order as its value, NaN's above inf's; or,
    a float ``AMAX`` (``torch.linalg.vector_norm(grad, inf)``, the gradient's dtype), the
    max itself, whose bits (a half's as float32, exactly) are read alike."""
    if AMAX.dtype.element_ty.is_floating():
        bits = _magnitude_bits(tl.load(AMAX))
    else:
        bits = tl.max(tl.load(AMAX + tl.arange(0, AMAX_PARTS)), axis=0)
    if bits.dtype == tl.int64:
        field = ((bits >> 52) & 0x7FF).to(tl.int32)
        bound = field - 1022
        finite = field != 0x7FF
    else:
        field = (bits >> 23) & 0xFF
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
def accumulator_channel(c, p, C, P: tl.constexpr, PS: tl.constexpr):
    """(channel, channels): where output channel c's bin p adds into the accumulator, and
    its channel count: channel c, or with PS (position-sensitive: input channel
    ``c * P + p``) bin by bin, ``p * C + c`` (``Accumulator(bins=P)``)."""
    if PS:
        return p * C + c, C * P
    return c, C


@triton.jit
def _magnitude_bits(g):
    """The bits of ``|g|``: of float64 ``g`` as int64, of ``g`` in float32 as int32."""
    if g.dtype == tl.float64:
        bits = g.to(tl.int64, bitcast=True) & 0x7FFFFFFFFFFFFFFF
    else:
        bits = g.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return bits


@triton.jit
def _bound_piece(G, AMAX, program, grad_size, GRAD_BLOCK: tl.constexpr):
    """AMAX[program] = max |G| over G's blocks of GRAD_BLOCK numbered ``program`` modulo
    AMAX_PARTS (the bits of the float32 magnitude, int32; float64's for float64 G)."""
    lane = tl.arange(0, GRAD_BLOCK)
    best = _magnitude_bits(tl.zeros((GRAD_BLOCK,), G.dtype.element_ty))
    # the whole blocks unmasked (vector loads, which a mask against a size of unknown
    # divisibility would split into single elements), then the partial one, if any, by
    # the program whose turn it is
    whole = grad_size // GRAD_BLOCK
    for i in range(0, tl.cdiv(whole - program, AMAX_PARTS)):
        g = tl.load(G + (tl.cast(i, tl.int64) * AMAX_PARTS + program) * GRAD_BLOCK + lane)
        best = tl.maximum(best, _magnitude_bits(g))
    at = tl.cast(whole, tl.int64) * GRAD_BLOCK + lane
    g = tl.load(G + at, mask=(at < grad_size) & (whole % AMAX_PARTS == program), other=0.0)
    best = tl.maximum(best, _magnitude_bits(g))
    tl.store(AMAX + program, tl.max(best, axis=0))


@triton.jit
def _zero_block(ACC, start, acc_size, BLOCK: tl.constexpr):
    """ACC[start : start + BLOCK] = 0, within ``acc_size``."""
    cells = start + tl.arange(0, BLOCK)
    if start + BLOCK <= acc_size:
        tl.store(ACC + cells, tl.zeros((BLOCK,), tl.int64))
    else:
        tl.store(ACC + cells, tl.zeros((BLOCK,), tl.int64), mask=cells < acc_size)


@kernel
def zero_and_bound_kernel(ACC, G, AMAX, acc_size, grad_size, BLOCK: tl.constexpr,
                          GRAD_BLOCK: tl.constexpr):  # fmt: skip
    """AMAX[i] = max |G| over G's blocks of GRAD_BLOCK numbered i modulo AMAX_PARTS (the
    bits of the float32 magnitude, int32; float64's for float64 G, int64) for the first
    AMAX_PARTS programs (each writes its piece, so AMAX need not be zeroed), and
    ACC[:acc_size] = 0 a block of BLOCK for the others."""
    program = tl.program_id(0)
    if program < AMAX_PARTS:
        _bound_piece(G, AMAX, program, grad_size, GRAD_BLOCK)
    else:
        _zero_block(ACC, tl.cast(program - AMAX_PARTS, tl.int64) * BLOCK, acc_size, BLOCK)


# ------------------------------------------------------- sums in the regions RoIs reach
@triton.jit
def region_rounds(K, BLOCK: tl.constexpr):
    """Rounds of a regions kernel's program: BLOCK RoIs a round, every REGION_PARTS-th
    round of K RoIs its own (``region_rois``)."""
    return tl.cdiv(tl.cdiv(K, BLOCK) - tl.program_id(0), REGION_PARTS)


@triton.jit
def region_rois(i, K, BLOCK: tl.constexpr):
    """(k, in_range, readable): the RoIs of this program's round i, which of them exist,
    and k where it does, 0 elsewhere (an index every load may take, K >= 1)."""
    k = (i * REGION_PARTS + tl.program_id(0)) * BLOCK + tl.arange(0, BLOCK)
    return k, k < K, tl.where(k < K, k, 0)


@triton.jit
def record_regions(RECTS, k, in_range, n, h0, h1, w0, w1, valid, H, W, areas, largest):
    """RECTS[k] = (n, h0, h1, w0, w1) for the lanes ``in_range``: RoI k's region, the
    cells [h0, h1) x [w0, w1) of image n clipped to the H x W map (empty for a RoI that
    is not ``valid``); returns ``areas`` and ``largest`` (per lane, int64) with these
    regions' areas in cells added and taken the max of."""
    h0 = tl.minimum(tl.maximum(h0, 0), H)
    w0 = tl.minimum(tl.maximum(w0, 0), W)
    h1 = tl.minimum(tl.maximum(h1, h0), H)
    w1 = tl.minimum(tl.maximum(w1, w0), W)
    h1 = tl.where(valid & (w0 < w1), h1, h0)
    at = RECTS + k.to(tl.int64) * 5
    tl.store(at, n.to(tl.int32), mask=in_range)
    tl.store(at + 1, h0, mask=in_range)
    tl.store(at + 2, h1, mask=in_range)
    tl.store(at + 3, w0, mask=in_range)
    tl.store(at + 4, w1, mask=in_range)
    area = tl.where(in_range, (h1 - h0).to(tl.int64) * (w1 - w0).to(tl.int64), 0)
    return areas + area, tl.maximum(largest, area)


@triton.jit
def finish_plan(PARTS, FLAGS, areas, largest, flag_count):
    """The end of a regions kernel's program (``Regions``): its piece of the areas' sum
    and largest, and its share of the zeroing of the flags, FLAG_BLOCK bytes a round."""
    program = tl.program_id(0)
    tl.store(PARTS + program, tl.sum(areas, axis=0))
    tl.store(PARTS + REGION_PARTS + program, tl.max(largest, axis=0))
    lane = tl.arange(0, FLAG_BLOCK)
    for i in range(0, tl.cdiv(tl.cdiv(flag_count, FLAG_BLOCK) - program, REGION_PARTS)):
        at = (tl.cast(i, tl.int64) * REGION_PARTS + program) * FLAG_BLOCK + lane
        tl.store(FLAGS + at, tl.zeros((FLAG_BLOCK,), tl.int8), mask=at < flag_count)


@triton.jit
def regions_chosen(PARTS, limit_sum, limit_largest):
    """Whether the RoIs' regions are zeroed rather than the whole accumulator: their
    areas sum to at most ``limit_sum`` cells and the largest to ``limit_largest``."""
    i = tl.arange(0, REGION_PARTS)
    total = tl.sum(tl.load(PARTS + i), axis=0)
    largest = tl.max(tl.load(PARTS + REGION_PARTS + i), axis=0)
    return (total <= limit_sum) & (largest <= limit_largest)


@kernel
def zero_regions_and_bound_kernel(
    ACC, G, AMAX, RECTS, PARTS, FLAGS, acc_size, grad_size, H, W, C, limit_sum, limit_largest,
    whole, BLOCK: tl.constexpr, GRAD_BLOCK: tl.constexpr, ROWS: tl.constexpr,
    CELLS: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``zero_and_bound_kernel`` for an accumulator with ``Regions``: the first AMAX_PARTS
    programs take max |G| in pieces; then, where the regions are chosen
    (``regions_chosen``, which program AMAX_PARTS stores as PARTS[2 * REGION_PARTS]),
    programs of (RoI k, block of BLOCK_C channels, row r modulo ROWS) zero the rows of
    region RECTS[k] that are theirs, CELLS cells a round, and mark them in FLAGS (the
    channel block 0 programs); else ``whole`` programs zero ACC[:acc_size], a block of
    BLOCK every whole-th round (a flat grid the size of the map would launch its programs
    whichever is chosen)."""
    program = tl.program_id(0)
    if program < AMAX_PARTS:
        _bound_piece(G, AMAX, program, grad_size, GRAD_BLOCK)
    else:
        chosen = regions_chosen(PARTS, limit_sum, limit_largest)
        if program == AMAX_PARTS:
            tl.store(PARTS + 2 * REGION_PARTS, chosen.to(tl.int64))
        part = program - AMAX_PARTS
        if part < whole:
            if not chosen:
                for i in range(0, tl.cdiv(tl.cdiv(acc_size, BLOCK) - part, whole)):
                    _zero_block(ACC, (tl.cast(i, tl.int64) * whole + part) * BLOCK, acc_size,
                                BLOCK)  # fmt: skip
        elif chosen:
            r = part - whole
            c_blocks = tl.cdiv(C, BLOCK_C)
            k = r // (c_blocks * ROWS)
            block = r // ROWS % c_blocks
            rect = RECTS + tl.cast(k, tl.int64) * 5
            n = tl.load(rect)
            h1 = tl.load(rect + 2)
            w0 = tl.load(rect + 3)
            w1 = tl.load(rect + 4)
            c = block * BLOCK_C + tl.arange(0, BLOCK_C)
            zeros = tl.zeros((CELLS, BLOCK_C), tl.int64)
            for h in range(tl.load(rect + 1) + r % ROWS, h1, ROWS):
                row = (tl.cast(n, tl.int64) * H + h) * W
                for w in range(w0, w1, CELLS):
                    cells = w + tl.arange(0, CELLS)
                    inside = cells < w1
                    at = row + cells
                    tl.store(ACC + at[:, None] * C + c[None, :], zeros,
                             mask=inside[:, None] & (c < C)[None, :])  # fmt: skip
                    if block == 0:
                        tl.store(FLAGS + at, tl.full((CELLS,), 1, tl.int8), mask=inside)


@kernel
def fixed_point_to_float_kernel(
    ACC, AMAX, GX, FLAGS, PARTS, H, W, C, log2_count, stride_n, stride_c, stride_h, stride_w,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BINS: tl.constexpr = 1,
    REGIONS: tl.constexpr = False,
):  # fmt: skip
    """GX[n, c, h, w] (any strides) = ACC[n, h, w, c] * 2**-e, or NaN if a gradient was
    not finite; with BINS > 1 the accumulator's channels go bin by bin: its channel
    ``p * (C / BINS) + c`` is GX's ``c * BINS + p``. One program per (row (n, h), block
    of BLOCK_W cells of it, block of BLOCK_C channels): the tile is read along channels
    and written along the row, so that with NCHW strides (``stride_w`` 1, which Triton
    specialises on) both sides are coalesced and Triton transposes the tile through
    shared memory. (A tile of cells numbered across rows hides the row's contiguity
    behind a ``% W``: each warp then stored one cell's 32 channels into 32 planes, a
    sector each.) ``REGIONS`` (an accumulator with ``Regions``): where the regions were
    chosen (PARTS[2 * REGION_PARTS]), ACC is read only at the cells FLAGS marks (the
    others were not zeroed), and the rest convert a zero."""
    w_blocks = tl.cdiv(W, BLOCK_W)
    c_blocks = tl.cdiv(C, BLOCK_C)
    row = tl.program_id(0) // (w_blocks * c_blocks)  # n * H + h
    rest = tl.program_id(0) % (w_blocks * c_blocks)
    w = (rest // c_blocks) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = (rest % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (w < W)[:, None] & (c < C)[None, :]
    cells = row.to(tl.int64) * W + w
    read = ok
    if REGIONS:
        chosen = tl.load(PARTS + 2 * REGION_PARTS) != 0
        # (a scalar & a tensor trips the interpreter)
        marked = tl.load(FLAGS + cells, mask=tl.where(chosen, w < W, False), other=1)
        read = ok & (marked != 0)[:, None]
    acc = tl.load(ACC + cells[:, None] * C + c[None, :], mask=read, other=0)
    _write_sums(GX, acc, AMAX, log2_count, row // H, row % H, w, c, ok, C,
                stride_n, stride_c, stride_h, stride_w, BINS)  # fmt: skip


@kernel
def fixed_point_bands_to_float_kernel(
    ACC, AMAX, GX, H, W, C, log2_count, stride_n, stride_c, stride_h, stride_w,
    BAND: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, BINS: tl.constexpr = 1,
):  # fmt: skip
    """``fixed_point_to_float_kernel`` for sums scattered as differences
    (``Accumulator(band=BAND)``): the sum of a cell is that of the accumulator over the
    cells at or left of it in its row, and at or above it in its band of BAND rows. One
    program per (image, band, block of BLOCK_C channels), its rows one after the other,
    each row's cells whole in one tile (BLOCK_W >= W): the row's prefix sums (along the
    tile's first axis) added to the band's running sums, written as the plain kernel
    writes them."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    bands = tl.cdiv(H, BAND)
    n = tl.program_id(0) // (bands * c_blocks)
    band = tl.program_id(0) // c_blocks % bands
    w = tl.arange(0, BLOCK_W)
    c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (w < W)[:, None] & (c < C)[None, :]
    sums = tl.zeros((BLOCK_W, BLOCK_C), tl.int64)
    for h in range(band * BAND, tl.minimum(band * BAND + BAND, H)):
        cells = (tl.cast(n, tl.int64) * H + h) * W + w
        row = tl.load(ACC + cells[:, None] * C + c[None, :], mask=ok, other=0)
        sums += tl.cumsum(row, axis=0)
        _write_sums(GX, sums, AMAX, log2_count, n, h, w, c, ok, C,
                    stride_n, stride_c, stride_h, stride_w, BINS)  # fmt: skip


@triton.jit
def _write_sums(GX, acc, AMAX, log2_count, n, h, w, c, ok, C, stride_n, stride_c, stride_h,
                stride_w, BINS: tl.constexpr):  # fmt: skip
    """GX[n, c, h, w] (any strides) = acc[w, c] * 2**-e (NaN if a gradient was not
    finite) over a tile of row h's cells w x accumulator channels c; with BINS > 1 the
    channels go bin by bin (``accumulator_channel``)."""
    _, inverse, finite = fixed_point_scale(AMAX, log2_count)
    value = acc.to(tl.float64) * tl.where(finite, inverse, float("nan"))
    if GX.dtype.element_ty != tl.float64:
        # half precision is rounded from float32, as the other backends round it
        value = value.to(tl.float32)
    start = tl.cast(n, tl.int64) * stride_n + tl.cast(h, tl.int64) * stride_h
    if BINS > 1:
        c = (c % (C // BINS)) * BINS + c // (C // BINS)
    # int64 throughout: a channels_last gradient's w * stride_w is w * C
    at = start + w.to(tl.int64)[:, None] * stride_w + c.to(tl.int64)[None, :] * stride_c
    tl.store(GX + at, value.to(GX.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------- launchers
class Accumulator:
    """One backward's fixed-point sums, for one input or several (the levels of a feature
    pyramid): ``parts[i]`` (zeroed int64 NHWC views of one buffer ``flat``, part i at
    element ``offsets[i]``), ``amax`` (``max |grad|`` in AMAX_PARTS pieces, or from
    TORCH_BOUND_GRADIENTS gradients on torch's one float, on the device: the bound the
    fixed-point scale is chosen from; a max is exact in any order, so the scale does not
    depend on how threads are scheduled) and ``log2_count``, as the
    scatter kernels take them; ``acc`` is ``parts[0]``. ``bins``
    > 1: the channels go bin by bin (position-sensitive ops, ``accumulator_channel``).

    ``band`` > 0: the scatter adds differences, not values (for a value added over a
    rectangle of cells, a few corners instead of every cell; ``roiops.gpu.ps_roi_pool``):
    a cell's sum is the accumulator's over the cells at or left of it in its row and at
    or above it in its band of ``band`` rows, which the conversion adds up. Only integer
    sums allow it: a difference and its prefix sums are exact in any order, so the
    gradient is the same bits as a scatter to every cell (float differences would cancel
    inexactly). Every partial sum stays within the bound ``log2_count`` gives: a cell
    takes at most one difference from each output (its corners are distinct cells).

    ``regions`` (one input, no bands): the RoIs' ``Regions``, filled by the op's regions
    kernel; the accumulator is then zeroed only there if that is chosen, and read only
    there by the conversion. The scatter must add nowhere else (roi_pool's drops an argmax
    outside its RoI's region)."""

    def __init__(self, grad: torch.Tensor, *input_shapes, bins: int = 1, band: int = 0,
                 regions: Regions | None = None):  # fmt: skip
        k, _, ph, pw = grad.shape
        self.offsets = offsets = self.offsets_of(input_shapes)
        n, c, h, w = input_shapes[-1]
        self.flat = torch.empty(offsets[-1] + n * h * w * c, dtype=torch.int64,
                                device=grad.device)  # fmt: skip
        if len(input_shapes) == 1:  # (a view of the whole: half the host time of a slice's)
            self.parts = [self.flat.view(n, h, w, c)]
        else:
            self.parts = [
                self.flat[o : o + n * h * w * c].view(n, h, w, c)
                for o, (n, c, h, w) in zip(offsets, input_shapes, strict=True)
            ]
        self.acc = self.parts[0]
        self.regions = regions
        if regions is None and grad.numel() >= TORCH_BOUND_GRADIENTS:
            self.flat.zero_()
            self.amax = torch.linalg.vector_norm(grad, float("inf"))
        elif regions is None:
            self.amax = zero_and_bound(self.flat, grad)
        else:
            assert len(input_shapes) == 1 and band == 0, "regions of one map, no bands"
            self.amax = regions.zero_and_bound(self.flat, grad, input_shapes[0][1])
        self.log2_count = max(k * ph * pw - 1, 0).bit_length()  # ceil(log2(count))
        self.bins = bins
        assert band == 0 or all(map(self.takes_bands, input_shapes)), "rows too long"
        self.band = band

    @staticmethod
    def offsets_of(input_shapes) -> list[int]:
        """Where the sums of each input of ``input_shapes`` (N, C, H, W) start in
        ``flat``: one after the other."""
        offsets = [0]
        for n, c, h, w in input_shapes[:-1]:
            offsets.append(offsets[-1] + n * h * w * c)
        return offsets

    @staticmethod
    def takes_bands(shape) -> bool:
        """Whether a map of ``shape`` (N, C, H, W) can take sums as differences: its rows
        fit the conversion's tile."""
        return next_power_of_2(shape[3]) <= BAND_TILE

    def write_to(self, grad_input: torch.Tensor, part: int = 0) -> torch.Tensor:
        """Convert sum ``part`` into ``grad_input[N, C, H, W]`` (any strides); every cell
        is written."""
        n, c, h, w = sizes = grad_input.shape
        if n * h * w == 0 or c == 0:
            return grad_input
        launch = _conversion_launch(sizes, grad_input.stride(), grad_input.dtype,
                                    grad_input.get_device(), self.log2_count, self.bins,
                                    self.band, self.regions is not None, BAND_TILE)  # fmt: skip
        regions = self.regions
        if self.band:
            launch(self.parts[part], self.amax, grad_input)
        elif regions is None:
            launch(self.parts[part], self.amax, grad_input, self.flat, self.flat)
        else:
            launch(self.parts[part], self.amax, grad_input, regions.flags, regions.parts)
        return grad_input


@cached
def _conversion_launch(sizes, strides, dtype, device, log2_count, bins, band, regions,
                       band_tile) -> Launch:  # fmt: skip
    """``Accumulator.write_to``'s launch into a gradient of ``sizes`` (N, C, H, W),
    ``strides`` and ``dtype`` on ``device``, for sums over ``2**log2_count`` outputs, their
    channels bin by bin for ``bins`` > 1, in bands of ``band`` rows (0: none), or in
    regions; its tensors ``(acc, amax, grad_input)``, and without bands ``flags, parts``
    (the regions', or the accumulator in their place)."""
    n, c, h, w = sizes
    values = (h, w, c, log2_count, *strides)
    if band:
        block_w = next_power_of_2(w)
        block_c = max(1, min(32, band_tile // block_w, next_power_of_2(c)))
        grid = (n * cdiv(h, band) * cdiv(c, block_c),)
        return Launch(fixed_point_bands_to_float_kernel, grid, values, BAND=band,
                      BLOCK_W=block_w, BLOCK_C=block_c, BINS=bins,
                      num_warps=max(1, min(8, block_w * block_c // 256)))  # fmt: skip
    grid = (n * h * cdiv(w, CONVERT_CELLS) * cdiv(c, CONVERT_CHANNELS),)
    return Launch(fixed_point_to_float_kernel, grid, values, BLOCK_W=CONVERT_CELLS,
                  BLOCK_C=CONVERT_CHANNELS, BINS=bins, REGIONS=regions, num_warps=4)  # fmt: skip


class Regions:
    """Where each RoI's gradient can land, so that a backward whose RoIs reach a small
    part of a large map zeroes and converts its fixed-point sums only there.

    The accumulator's fixed cost is memory traffic over the whole map: zeroing (8 bytes a
    cell and channel) and the conversion (8 read, 4 written), against the 4 bytes of a
    float gradient's zero fill; on an H100 it took more than torchvision's whole backward
    where small RoIs meet a large map (roi_pool's 'a small' bench case: 0.32 ms of 0.58).
    With regions: the op's regions kernel (REGION_PARTS programs) writes each RoI's
    rectangle of cells ``rects[k] = (n, h0, h1, w0, w1)``, pieces of the areas' sum and
    of the largest (``parts``) and zeroes ``flags`` (a byte a cell of the map, channels
    shared); ``zero_regions_and_bound_kernel`` then chooses on the device (no host
    synchronisation): if the areas sum to at most 1 / REGION_SUM_SHARE of the cells and
    the largest to 1 / REGION_LARGEST_SHARE, it zeroes each region's cells in every
    channel and marks them, and the conversion reads the accumulator only at marked cells
    (the rest are zeros): ``4 + 8 (sum + union) / cells`` bytes a cell and channel
    instead of 20. Otherwise (large or many RoIs) the whole accumulator is zeroed and
    read, as without regions. Either way the gradient is the same bits as the whole
    accumulator's, for a scatter that adds only inside its RoI's region.

    (A byte a cell marked by a kernel per RoI around a box widened by two cells, then a
    zeroing and conversion over every cell reading the marks, was measured at 0d8c98e on
    an H100 and lost, each of its passes timed with its host time: 0.18 + 0.16 ms
    against 0.10 + 0.19 on 'a small'. This zeroes only the regions, no pass over the
    map but the conversion, and the regions are exact: roi_pool's its bins' union,
    roi_align's the cells its first and last bins' points touch.)"""

    def __init__(self, rois: torch.Tensor, shape) -> None:
        n, _, h, w = shape
        device = rois.device
        self.shape = tuple(shape)
        self.rects = torch.empty((rois.shape[0], 5), dtype=torch.int32, device=device)
        self.parts = torch.empty(2 * REGION_PARTS.value + 1, dtype=torch.int64, device=device)
        self.flags = torch.empty(n * h * w, dtype=torch.int8, device=device)

    @classmethod
    def found_by(cls, kernel, rois: torch.Tensor, shape, spatial_scale: float, *args,
                 **constexprs) -> Regions:  # fmt: skip
        """The regions of ``rois`` on a map of ``shape`` (N, C, H, W), filled by an op's
        regions ``kernel`` (REGION_PARTS programs), which takes ``(ROIS, RECTS, PARTS,
        FLAGS, K, N, H, W, scale_bits, flag_count, *args, **constexprs, BLOCK)``."""
        regions = cls(rois, shape)
        launch = _regions_launch(kernel, rois.shape[0], regions.shape, rois.dtype,
                                 rois.get_device(), spatial_scale, args,
                                 tuple(constexprs.items()), REGION_ROIS)  # fmt: skip
        launch(rois, regions.rects, regions.parts, regions.flags)
        return regions

    def zero_and_bound(self, flat: torch.Tensor, grad: torch.Tensor, channels: int):
        """``zero_and_bound`` of ``flat``, an accumulator of these regions' map with
        ``channels`` channels, by ``zero_regions_and_bound_kernel``."""
        amax = new_amax(grad)
        launch = _zero_regions_launch(flat.numel(), grad.numel(), grad.dtype, grad.get_device(),
                                      self.shape, channels, self.rects.shape[0],
                                      REGION_SUM_SHARE, REGION_LARGEST_SHARE,
                                      WHOLE_PROGRAMS)  # fmt: skip
        launch(flat, grad.contiguous(), amax, self.rects, self.parts, self.flags)
        return amax

    def chosen(self) -> bool:
        """Whether the regions were chosen (a host synchronisation: for tests)."""
        return bool(self.parts[2 * REGION_PARTS.value])


@cached
def _regions_launch(kernel, K, shape, dtype, device, spatial_scale, args, constexprs,
                    block) -> Launch:  # fmt: skip
    """``Regions.found_by``'s launch of a regions ``kernel`` for K RoIs of ``dtype`` on
    ``device``, a map of ``shape`` (N, C, H, W), the kernel's further ``args`` and
    ``constexprs`` (name, value pairs) and ``block`` RoIs a round (REGION_ROIS): its
    tensors ``(rois, rects, parts, flags)``."""
    n, _, h, w = shape
    values = (K, n, h, w, scale_bits(spatial_scale), n * h * w, *args)
    return Launch(kernel, (REGION_PARTS.value,), values, **dict(constexprs), BLOCK=block,
                  num_warps=4)  # fmt: skip


@cached
def _zero_regions_launch(acc_size, grad_size, dtype, device, shape, channels, K, sum_share,
                         largest_share, whole_programs) -> Launch:  # fmt: skip
    """``Regions.zero_and_bound``'s launch for an accumulator of ``acc_size`` elements
    over a map of ``shape`` (N, C, H, W) with ``channels`` channels, ``grad_size``
    gradients of ``dtype`` on ``device``, K RoIs and the choice's settings
    (REGION_SUM_SHARE, REGION_LARGEST_SHARE, WHOLE_PROGRAMS): its tensors ``(flat, grad,
    amax, rects, parts, flags)``."""
    _, _, h, w = shape
    cells = shape[0] * h * w
    block_c = min(REGION_CHANNELS, next_power_of_2(channels))
    regions = K * cdiv(channels, block_c) * REGION_ROWS
    # (no more whole-map programs than blocks to zero: a small map takes a few)
    whole = max(1, min(whole_programs, cdiv(acc_size, ZERO_BLOCK)))
    grid = check_grid(AMAX_PARTS.value + whole + regions, "backward")
    values = (acc_size, grad_size, h, w, channels, cells // sum_share, cells // largest_share,
              whole)  # fmt: skip
    return Launch(zero_regions_and_bound_kernel, grid, values, BLOCK=ZERO_BLOCK,
                  GRAD_BLOCK=amax_block(dtype), ROWS=REGION_ROWS, CELLS=REGION_CELLS,
                  BLOCK_C=block_c, num_warps=ZERO_WARPS)  # fmt: skip


def new_amax(grad: torch.Tensor) -> torch.Tensor:
    """An empty ``max |grad|`` in AMAX_PARTS pieces, as the zeroing kernels write it: the
    bits of float32 magnitudes as int32, or of float64 ones as int64 for float64 ``grad``."""
    wide = torch.int64 if grad.dtype == torch.float64 else torch.int32
    return torch.empty(AMAX_PARTS.value, dtype=wide, device=grad.device)


def amax_block(dtype: torch.dtype) -> int:
    """Gradients a ``zero_and_bound_kernel`` program reads at a time: AMAX_BLOCK, half
    that in float64 (32 KB either way)."""
    return AMAX_BLOCK // 2 if dtype == torch.float64 else AMAX_BLOCK


def zero_and_bound(flat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Zero the int64 buffer ``flat`` and return ``max |grad|`` in AMAX_PARTS pieces
    (``zero_and_bound_kernel``), in one launch."""
    amax = new_amax(grad)
    launch = _zero_and_bound_launch(flat.numel(), grad.numel(), grad.dtype, grad.get_device())
    launch(flat, grad.contiguous(), amax)
    return amax


@cached
def _zero_and_bound_launch(acc_size: int, grad_size: int, dtype, device) -> Launch:
    """``zero_and_bound``'s launch for an accumulator of ``acc_size`` elements and
    ``grad_size`` gradients of ``dtype`` on ``device``: its tensors ``(flat, grad,
    amax)``."""
    grid = (AMAX_PARTS.value + cdiv(acc_size, ZERO_BLOCK),)
    return Launch(zero_and_bound_kernel, grid, (acc_size, grad_size), BLOCK=ZERO_BLOCK,
                  GRAD_BLOCK=amax_block(dtype), num_warps=ZERO_WARPS)  # fmt: skip
