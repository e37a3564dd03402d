"""Reading RoIs in the kernels: spatial_scale, exact division, and the RoI's validity.

Two things compiled Triton does differently from its interpreter (and from C++ compiled
for the CPU) matter here. Float32 ``/`` becomes an approximate division (``div.full.f32``,
up to 2 ulp), so a quotient that is floored or ceiled to choose cells or sample counts
(roi_pool's bin edges, roi_align's adaptive grid) would differ from torchvision's CUDA
kernels, which divide in IEEE: every division in the kernels goes through ``div_rn``.
And ``a * b + c`` may become one fused multiply-add; where that only moves the last bit
of a weight it is left alone, and the GPU tests compare roi_align with tolerances.

The kernels must be safe for any RoI value, because on CUDA the ops do not look at the
values on the host (that would synchronise): ``load_roi`` flags a RoI whose batch index
is not a whole number in ``[0, N)`` or whose coordinates, or sides, times spatial_scale
are not finite (``adaptive_grid``: or, with adaptive sampling, whose bins would take more
than ``MAX_ADAPTIVE_GRID`` points along an axis). Such a RoI reads nothing (its batch
index is replaced by 0), its outputs are NaN and it sends no gradient.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl

from roiops import _validate

# the most points a bin takes along an axis with adaptive sampling: a RoI that asks for
# more is invalid (``roiops._validate.MAX_ADAPTIVE_GRID``)
MAX_ADAPTIVE_GRID = tl.constexpr(_validate.MAX_ADAPTIVE_GRID)


def scale_bits(spatial_scale: float) -> int:
    """spatial_scale as the bits of a float64, the way it reaches the kernels: a Python
    float argument would reach them as float32, and float64 RoIs would not be scaled as
    the reference scales them. (A tensor would cost an allocation and a copy per call.)"""
    return struct.unpack("<q", struct.pack("<d", float(spatial_scale)))[0]


@triton.jit
def from_bits(bits, dtype: tl.constexpr):
    """The float64 whose bits ``bits`` holds (``scale_bits``), rounded to ``dtype``. (Bits
    that fit in 32 bits, 0.0's among them, reach a kernel as an int32 argument.)"""
    return bits.to(tl.int64).to(tl.float64, bitcast=True).to(dtype)


@triton.jit
def div_rn(a, b):
    """a / b rounded to nearest, in a's dtype (IEEE, as C++ and torchvision divide)."""
    if a.dtype == tl.float64:
        # float64 division is always IEEE (div.rn.f64); Triton's precise division is
        # float32 only
        q = a / tl.cast(b, tl.float64)
    else:
        # div_rn, not fdiv(..., ieee_rounding=True): Triton 3.6 ignores that flag and
        # emits div.full.f32 (seen in its PTX; 3.8 honours it)
        q = tl.math.div_rn(a, tl.cast(b, a.dtype))
    return q


@triton.jit
def is_finite(v):
    """Neither NaN nor infinite (NaN fails every comparison)."""
    return tl.abs(v) < float("inf")


@triton.jit
def batch_index(ROIS, k, N, COLUMNS: tl.constexpr):
    """(n, ok): RoI k's image (rows of COLUMNS values, the batch index first), and
    whether its batch index is a whole number in [0, N) (NaN fails every comparison).
    n is 0 where it is not."""
    b = tl.load(ROIS + k.to(tl.int64) * COLUMNS)
    ok = (b >= 0) & (b < N) & (b == tl.floor(b))
    return tl.where(ok, b, 0).to(tl.int64), ok


@triton.jit
def _box(ROIS, k, N):
    """(n, x1, y1, x2, y2, ok) of RoI k (rows of 5): ok where its batch index is."""
    n, ok = batch_index(ROIS, k, N, 5)
    roi = ROIS + k.to(tl.int64) * 5
    return n, tl.load(roi + 1), tl.load(roi + 2), tl.load(roi + 3), tl.load(roi + 4), ok


@triton.jit
def load_box(ROIS, k, N):
    """(n, x1, y1, x2, y2, valid) of RoI k (rows of 5), its coordinates as they are. n is
    0 where the RoI is not valid."""
    n, x1, y1, x2, y2, valid = _box(ROIS, k, N)
    valid = valid & is_finite(x1) & is_finite(y1) & is_finite(x2) & is_finite(y2)
    return tl.where(valid, n, 0), x1, y1, x2, y2, valid


@triton.jit
def load_roi(ROIS, k, N, SCALE_BITS):
    """(n, x1, y1, x2, y2, valid) of RoI k, coordinates times spatial_scale in the RoIs'
    dtype (the reference's ``T(x) * T(scale)``). Not valid (n = 0): a bad batch index, or
    scaled corners or sides that are not finite (a side can overflow where its corners do
    not; a coordinate that is not finite stays so, the scale being finite). Where the
    compiler fuses a side's product and difference into an FMA, a side within a rounding
    of the dtype's largest value may pass here and fail the host's check."""
    spatial_scale = from_bits(SCALE_BITS, ROIS.dtype.element_ty)
    n, x1, y1, x2, y2, valid = _box(ROIS, k, N)
    x1 = x1 * spatial_scale
    y1 = y1 * spatial_scale
    x2 = x2 * spatial_scale
    y2 = y2 * spatial_scale
    valid = valid & is_finite(x1) & is_finite(y1) & is_finite(x2) & is_finite(y2)
    valid = valid & is_finite(x2 - x1) & is_finite(y2 - y1)
    return tl.where(valid, n, 0), x1, y1, x2, y2, valid


@triton.jit
def adaptive_grid(bin_h, bin_w, sampling_ratio, valid):
    """(grid_h, grid_w, valid) of a RoI whose bins are ``bin_h`` x ``bin_w`` cells: the
    sampling grid, ``sampling_ratio`` points an axis or, where that is <= 0, ceil(bin
    size) (negative sizes: an empty grid); not valid (and an empty grid) where the RoI
    was not, or its adaptive grid would take more than MAX_ADAPTIVE_GRID points an axis
    (a float above 2**31 would not even convert to a count)."""
    adaptive_h = tl.maximum(tl.ceil(bin_h), 0.0)
    adaptive_w = tl.maximum(tl.ceil(bin_w), 0.0)
    fits = tl.maximum(adaptive_h, adaptive_w) <= MAX_ADAPTIVE_GRID
    valid = valid & ((sampling_ratio > 0) | fits)
    # (a count that does not fit converts to anything: an invalid RoI's grid is empty)
    adaptive_h = adaptive_h.to(tl.int32)
    adaptive_w = adaptive_w.to(tl.int32)
    grid_h = tl.where(valid, tl.where(sampling_ratio > 0, sampling_ratio, adaptive_h), 0)
    grid_w = tl.where(valid, tl.where(sampling_ratio > 0, sampling_ratio, adaptive_w), 0)
    return grid_h, grid_w, valid
