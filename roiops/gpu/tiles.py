"""The work splits the Triton kernels share.

Forward: one program per (RoI, block of BLOCK consecutive outputs of that RoI), outputs
numbered ``q = c * PH * PW + p`` as they lie in ``OUT[K, C, PH, PW]``: no lane is padding
(a [channels, bins] tile would pad 49 bins to 64), neighbouring lanes sample neighbouring
bins of one channel, and the stores are contiguous: the argmax ``[K, PH, PW, C]`` of these
kernels lies channel-major (``roiops._layout.new_argmax``), as the output does.

Backward, and the forward of channels_last inputs: one program per (RoI, bin, block of
channels): the bin's geometry is computed once, in scalars, and the lanes are channels,
so each load from an NHWC input, and each atomic into the NHWC fixed-point accumulator
(``roiops.gpu.fixed_point``), covers consecutive addresses.

The argmax backward (roi_pool) has no geometry to share: one program per (RoI, block of
channels) takes a [bins, channels] tile, so that both of its loads are contiguous: the
output gradient ``G[k, c, :]`` along bins, the argmax ``ARGMAX[k, p, :]`` along channels
(lanes along channels alone would read ``G`` with a stride of the bin count, a 32-byte
sector for each 4-byte value).

Program order: CUDA starts programs about in the order of their ids, so the order decides
which programs are in flight together (some 4,000 one-warp programs on an H100). RoI-major
(a RoI's programs one after the other), those read a few dozen RoIs' windows in every
channel; RoIs innermost (``ROIS_INNER``: the block of outputs or channels outermost), they
read every RoI's window in a few channels, a few MB that L2 keeps. ``GATHER_ROIS_INNER``
orders the kernels that read the maps, ``SCATTER_ROIS_INNER`` those that add into the
fixed-point accumulator.

Every kernel is declared with ``kernel``: ``triton.jit`` without specialising on
feature-map sizes (``UNSPECIALISED``), launched through ``roiops.gpu.launch``.
"""

from __future__ import annotations

import functools
import inspect

import triton
import triton.language as tl

from roiops._layout import is_channels_last  # noqa: F401  (the launchers' layout test)
from roiops._validate import MAX_LEVELS
from roiops.gpu.launch import Kernel

# Program sizes, measured on an H100 (float32, 7x7 bins; the kernels alone; `make gpu`'s
# kernel_configs part times the alternatives on the GPU at hand):
# - NCHW forward: BLOCK outputs a program, 2 per thread on one warp (64): relative to 256
#   on 4 warps, 0.97 / 1.01 / 0.86 / 0.96 / 0.89 of the time on the bench's roi_align
#   'a small sr=0' / 'a large sr=0' / 'a large sr=2' / 'b sr=2' / FPN P2 maps, 0.91 / 0.93
#   on roi_pool's 'a small' / 'b' (256 on 4 itself had beaten 512 on 8 and 1024 on 8).
#   With an adaptive sampling grid (roi_align's sampling_ratio <= 0: the points a bin
#   grow with its size) one output a thread, 256 on 8 warps: 0.59 of the time on 'a
#   large sr=0' (7.35 ms, torchvision 8.16; 2 a thread: 9.4-15.4 ms, whatever the
#   program), where a bin holds up to 19x19 points, but 1.19 on 'a small sr=0'. At
#   5b130dd (kernel_configs) RoI-major (ADAPTIVE_ROIS_INNER) took 0.186 / 7.39 ms on 'a
#   small sr=0' / 'a large sr=0', against 0.197 / 7.60 with the RoIs innermost
#   (program_order, the op: 0.212 / 7.38 against 0.227 / 7.67): the adaptive grids'
#   loops, not the map's fetches, bound those kernels. (128 on 4 warps RoI-major took
#   0.180 / 7.29, within the noise of it, and makes roi_align_rotated's forward spill on
#   Triton 3.6);
# - backward scatter: one channel per thread, 32 channels on one warp, with the RoIs
#   innermost (SCATTER_ROIS_INNER): on an H100 at 5b130dd, the op's backward on roi_align
#   'a large sr=0' / 'a large sr=2' / 'b sr=2' / 'b sr=2 NHWC' / FPN took 5.64 / 1.22 /
#   1.12 / 1.09 / 3.33 ms, against 13.63 / 1.71 / 1.55 / 1.57 / 3.52 for 256 channels on
#   8 warps RoI-major (and 9.1 / 2.0 / 1.6 / 1.6 / 5.1 for 16 channels): the programs in
#   flight add into a few channels of every RoI's window, whose accumulator lines L2
#   keeps; the kernels alone (kernel_configs) took roi_align's scatter 'b sr=2' 0.70 ms
#   against 1.16, roi_pool's 'b' 0.27 against 0.53. (Earlier, RoI-major: 256 channels on
#   8 warps 0.362 / 1.148 / 0.202 ms, against 0.447 / 1.567 / 0.280 for 2 a thread.)
# - NHWC forward: 64 channels on 1 warp, 2 a thread: 0.307 ms on 'b sr=2 NHWC', 0.320 for
#   128 on 2 warps, 0.333 for 256 on 4.
FORWARD_BLOCK = 64
FORWARD_PER_THREAD = 2
ADAPTIVE_FORWARD_BLOCK = 256
ADAPTIVE_FORWARD_PER_THREAD = 1
BACKWARD_CHANNELS = 32
BACKWARD_PER_THREAD = 1
NHWC_FORWARD_CHANNELS = 64
NHWC_FORWARD_PER_THREAD = 2
# - position-sensitive backward (``roi_outputs_tile``): 256 of a RoI's (bin, channel)
#   outputs a program, one a thread (on an H100, 0.17 ms for the R-FCN case's op against
#   0.18 a program per (RoI, bin), which held 21 busy lanes of one warp for 21 classes)
PS_BACKWARD_OUTPUTS = 256
# Program order (module docstring), read at every launch. RoI-major, the NCHW forward
# kernels fetch 1.5 / 2.5 / 3.2 GB from memory on the bench's roi_align 'b sr=2', 'a
# large sr=2' and roi_pool 'b' cases (a 32-byte sector for each row of a RoI's window
# that a channel's samples touch, summed over RoIs and channels as if no two RoIs shared
# a line in L2, 50 MB against maps of 111-134 MB; benchmarks/memory_traffic.py): 0.44 /
# 0.76 / 0.95 ms at an H100's 3.35 TB/s, and they took 0.48-0.54 / 0.78-0.81 / 1.11-1.23
# ms there, torchvision (RoI-major too) 0.54-0.68 / 0.85-0.87 / 1.20-1.22: they wait on memory.
# RoIs innermost, the maps are fetched about once (0.03-0.04 ms) and the rest read from
# L2, which the same sectors pass through in either order: the forward kernels read the
# maps with RoIs innermost, a choice by that count (on an H100 at 5b130dd, program_order:
# 'b sr=2' 0.33 ms against 0.56 RoI-major, 'a large sr=2' 0.43 against 0.85, roi_pool
# 'b' 0.97 against 1.36; equal within noise on the small cases). The scatter kernels too,
# with 32 channels a program (BACKWARD_CHANNELS above): 1.1-2.4x faster where the RoIs
# are large or many; RoI-major with 256 channels a program, a 256-channel map was one
# block and the order changed nothing.
GATHER_ROIS_INNER = True
SCATTER_ROIS_INNER = True
# the NCHW forwards with an adaptive sampling grid: RoI-major (measured above)
ADAPTIVE_ROIS_INNER = False
# The argmax backward (roi_pool) takes all bins of a RoI at once, a [bins, channels] tile
# of up to this many elements (bins in steps of up to ARGMAX_BINS)
ARGMAX_TILE = 1024
ARGMAX_BINS = 256
# CUDA's first grid dimension holds at most 2**31 - 1 programs (the others 65535)
MAX_PROGRAMS = 2**31 - 1
# Kernel arguments that change with the feature maps' sizes and with the call (sizes,
# pyramid offsets, strides, scales, counts). Triton specialises integer arguments on
# their value (== 1, divisible by 16) and compiles a variant per pattern: every new
# image size of a multi-scale training run could compile the kernels again (ten such
# arguments in the FPN kernels), for no speed, as these index gathers and atomics. The
# channel count and a unit stride stay specialised: they make accesses contiguous.
UNSPECIALISED = frozenset(
    ["N", "H", "W", "K", "scale_bits", "gamma_bits", "trans_std_bits", "extrapolation_bits",
     "sampling_ratio",
     "log2_count", "stride_n",
     "stride_c", "stride_h", "acc_size", "grad_size", "flag_count", "limit_sum", "limit_largest"]
    + [f"{name}{level}" for name in "HWOS" for level in range(5)]
)  # fmt: skip


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv(a, b)`` for host code (b > 0): Triton's is a constexpr function whose
    call costs ~1.45 us outside a kernel (Triton 3.6 and 3.8 alike), and a backward's
    launchers made up to seven."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2(n)`` for host code (as ``cdiv``): the least power of two
    >= n, 0 for 0."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def kernel(fn):
    """``triton.jit`` of a kernel whose ``UNSPECIALISED`` arguments are not specialised,
    launched by ``roiops.gpu.launch.Kernel`` (less host time a launch)."""
    names = [name for name in inspect.signature(fn).parameters if name in UNSPECIALISED]
    return Kernel(triton.jit(do_not_specialize=names)(fn))


# every cache of what the launchers compute from a call's sizes and settings (``cached``)
_CACHES: list = []


def cached(fn):
    """``functools.lru_cache`` of a function of a launch's sizes and settings: a grid, or
    a launcher's ``roiops.gpu.launch.Launch``. Every switch such a function reads that
    may change while a process runs (those the tests and ``make gpu-tune`` flip:
    ``REUSE_LOADS``, ``RUNS``, ``SPAN``, ``BAND``, the program orders, ...) is one of its
    arguments, so part of its key; this module's program sizes are the exception, and a
    change of them must be followed by ``clear_caches``."""
    wrapped = functools.lru_cache(maxsize=256)(fn)  # a few microseconds a call otherwise
    _CACHES.append(wrapped)
    return wrapped


def clear_caches() -> None:
    """Empty every ``cached`` function (after a change of this module's settings, or of a
    kernel that a launcher's ``Launch`` holds)."""
    for cache in _CACHES:
        cache.cache_clear()


def per_level(values, fill) -> list:
    """``values`` (one per pyramid level) padded with ``fill`` to the MAX_LEVELS arguments
    of a kernel that takes every level side by side."""
    return [*values, *([fill] * (MAX_LEVELS - len(values)))]


def check_grid(programs: int, op: str) -> tuple[int]:
    if programs > MAX_PROGRAMS:
        raise ValueError(
            f"{op}: {programs} GPU programs exceed CUDA's grid limit of {MAX_PROGRAMS}; "
            "split the boxes into several calls"
        )
    return (programs,)


def forward_rois_inner(adaptive: bool) -> bool:
    """The program order of an NCHW forward launch (``ROIS_INNER``): GATHER_ROIS_INNER, or
    ADAPTIVE_ROIS_INNER where the kernel samples an adaptive grid."""
    return ADAPTIVE_ROIS_INNER if adaptive else GATHER_ROIS_INNER


@cached
def bins_grid(num_rois: int, channels: int, pooled_h: int, pooled_w: int, op: str = "forward",
              adaptive: bool = False):  # fmt: skip
    """``(grid, block, num_warps)`` for a forward launch, on a 1-D grid; ``adaptive``: the
    kernel samples an adaptive grid (a bin's points grow with its size)."""
    outputs = channels * pooled_h * pooled_w
    most, per_thread = (
        (ADAPTIVE_FORWARD_BLOCK, ADAPTIVE_FORWARD_PER_THREAD)
        if adaptive
        else (FORWARD_BLOCK, FORWARD_PER_THREAD)
    )
    block = min(most, next_power_of_2(outputs))
    num_warps = min(max(block // (32 * per_thread), 1), 8)
    return check_grid(num_rois * cdiv(outputs, block), op), block, num_warps


@triton.jit
def roi_and_block(blocks, ROIS_INNER: tl.constexpr):
    """(unit, block): this program's unit of work (a RoI, or a (RoI, bin) pair numbered
    ``k * P + p``) and its block of the unit's ``blocks`` (of outputs or channels), in the
    program order ``ROIS_INNER`` says: RoI-major, a unit's blocks one after the other;
    RoIs innermost, every unit's first block, then every unit's second, and so on."""
    if ROIS_INNER:
        rois = tl.num_programs(0) // blocks
        return tl.program_id(0) % rois, tl.program_id(0) // rois
    return tl.program_id(0) // blocks, tl.program_id(0) % blocks


@triton.jit
def bins_tile(C, P: tl.constexpr, BLOCK: tl.constexpr, ROIS_INNER: tl.constexpr = False):
    """(k, c, p, ok): this program's RoI and, per lane, channel and flattened bin.

    Lanes count from the block's first channel, found in int64: C * P may pass 2**31."""
    k, block = roi_and_block(tl.cdiv(C * P, BLOCK), ROIS_INNER)
    first = block.to(tl.int64) * BLOCK
    lane = (first % P).to(tl.int32) + tl.arange(0, BLOCK)
    c = (first // P).to(tl.int32) + lane // P
    return k, c, lane % P, c < C


@cached
def roi_outputs_grid(num_rois: int, outputs: int, op: str = "backward"):
    """``(grid, block, num_warps)`` for a launch of ``roi_outputs_tile`` programs over
    ``num_rois`` RoIs of ``outputs`` outputs each, one a thread."""
    block = min(PS_BACKWARD_OUTPUTS, next_power_of_2(outputs))
    return check_grid(num_rois * cdiv(outputs, block), op), block, max(1, block // 32)


@triton.jit
def roi_outputs_tile(C, P: tl.constexpr, BLOCK: tl.constexpr, ROIS_INNER: tl.constexpr = False):
    """(k, p, c, ok): this program's RoI and, per lane, flattened bin and channel of a
    block of BLOCK of the RoI's ``C * P`` outputs, channels innermost (the backward's
    lanes for the position-sensitive ops, whose accumulator channels ``p * C + c`` then
    lie side by side); a grid of ``K * cdiv(C * P, BLOCK)`` programs."""
    k, block = roi_and_block(tl.cdiv(C * P, BLOCK), ROIS_INNER)
    # (in int64: C * P may pass 2**31)
    output = block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    p = (output // C).to(tl.int32)
    return k, p, (output % C).to(tl.int32), p < P


@triton.jit
def store_bins(OUT, ARGMAX, values, argmax, k, c, p, ok, C, P: tl.constexpr,
               STORE_ARGMAX: tl.constexpr, CHANNEL_MAJOR: tl.constexpr = True):  # fmt: skip
    """OUT[k, c, p] = values; ARGMAX[k, p, c] = argmax (``output_offsets``)."""
    out_at, argmax_at = output_offsets(k, c, p, C, P, CHANNEL_MAJOR)
    tl.store(OUT + out_at, values.to(OUT.dtype.element_ty), mask=ok)
    if STORE_ARGMAX:
        tl.store(ARGMAX + argmax_at, argmax, mask=ok)


@cached
def bin_channels_grid(num_rois: int, channels: int, pooled_h: int, pooled_w: int,
                      op: str = "backward", forward: bool = False):  # fmt: skip
    """``(grid, block_c, num_warps)`` for a backward launch (``forward``: an NHWC
    forward's), on a 1-D grid."""
    most, per_thread = (
        (NHWC_FORWARD_CHANNELS, NHWC_FORWARD_PER_THREAD)
        if forward
        else (BACKWARD_CHANNELS, BACKWARD_PER_THREAD)
    )
    block_c = min(most, next_power_of_2(channels))
    num_warps = max(1, block_c // (32 * per_thread))
    programs = num_rois * pooled_h * pooled_w * cdiv(channels, block_c)
    return check_grid(programs, op), block_c, num_warps


@cached
def roi_channels_grid(num_rois: int, channels: int, bins: int, op: str = "backward"):
    """``(grid, block_p, block_c, num_warps)`` for a launch of one program per (RoI,
    block of channels) that visits the RoI's ``bins`` in [block_p, block_c] tiles."""
    block_p = min(next_power_of_2(bins), ARGMAX_BINS)
    block_c = max(1, min(ARGMAX_TILE // block_p, next_power_of_2(channels)))
    num_warps = max(1, min(4, block_p * block_c // 256))
    return check_grid(num_rois * cdiv(channels, block_c), op), block_p, block_c, num_warps


@triton.jit
def roi_channels_tile(C, BLOCK_C: tl.constexpr, ROIS_INNER: tl.constexpr = False):
    """(k, c, c_ok): this program's RoI and channels (``roi_channels_grid``)."""
    k, block = roi_and_block(tl.cdiv(C, BLOCK_C), ROIS_INNER)
    c = block * BLOCK_C + tl.arange(0, BLOCK_C)
    return k, c, c < C


@triton.jit
def bin_channels_tile(C, P: tl.constexpr, BLOCK_C: tl.constexpr, ROIS_INNER: tl.constexpr = False):
    """(k, p, c, c_ok): this program's RoI, flattened bin, and channel per lane; a RoI's
    bins one after the other (``roi_and_block``'s units are (RoI, bin) pairs)."""
    pair, block = roi_and_block(tl.cdiv(C, BLOCK_C), ROIS_INNER)
    c = block * BLOCK_C + tl.arange(0, BLOCK_C)
    return pair // P, pair % P, c, c < C


@triton.jit
def output_offsets(k, c, p, C, P: tl.constexpr, CHANNEL_MAJOR: tl.constexpr = True):
    """Offsets of ``[K, C, P]`` outputs (or their gradients) and of the argmax
    ``[K, P, C]`` entries of RoI k, bin(s) p, channel(s) c, in int64; the argmax lies
    ``CHANNEL_MAJOR`` (as the outputs) or channels last (``roiops._layout``)."""
    k = k.to(tl.int64)
    out_at = (k * C + c) * P + p
    if CHANNEL_MAJOR:
        return out_at, out_at
    return out_at, (k * P + p) * C + c


@triton.jit
def pick_level(LEVELS, k, NUM_LEVELS: tl.constexpr, A0, A1, A2, A3, A4):
    """(usable, A): whether RoI k's level ``LEVELS[k]`` is in ``[0, NUM_LEVELS)``, and the
    level's entry of A0..A4 (level 0's where it is out of range)."""
    level = tl.load(LEVELS + k)
    usable = (level >= 0) & (level < NUM_LEVELS)
    a = tl.where(level == 1, A1, A0)
    a = tl.where(level == 2, A2, a)
    a = tl.where(level == 3, A3, a)
    a = tl.where(level == 4, A4, a)
    return usable, a
