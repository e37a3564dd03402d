"""ReDet's orientation turn (``roiops.ops.riroi_align_rotated``) in Triton: one launch and
one pass over the pooled features, each RoI's shift and weights computed from its angle
in the kernel (torch's operations took some twenty launches).

``OUT[k, g, o, p] = (1 - f) * X[k, g, i, p] + f * X[k, g, (i + D) % NO, p]`` with
``i = (o - D * s) % NO`` (``NO`` orientations): ``D = 1`` turns the pooled features (the
forward), ``D = -1`` their gradient back (the backward). ``s`` and ``f`` are
``roiops.ops.riroi_align_rotated.orientation_shift``'s, in its arithmetic (``theta *
NO`` in the angles' dtype, divided by ``2 pi`` in float64 and rounded); compiled, the
weighted sum may be one fused multiply-add (its last bit then differs from the CPU's).
Any angle reads in bounds: a non-finite one gives NaN weights, so NaN outputs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.launch import Launch
from roiops.gpu.tiles import kernel

TWO_PI = tl.constexpr(6.283185307179586)
# elements of one (RoI, group)'s O x P outputs a program takes at most
BLOCK = 1024


@kernel
def turn_orientations_kernel(X, ANGLES, OUT, G, P, angle_stride, NO: tl.constexpr,
                             D: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """One program per (RoI, group, block of BLOCK of its NO * P outputs); X and OUT
    ``[K, G, NO, P]`` contiguous, ANGLES ``[K]`` with ``angle_stride``."""
    blocks = tl.cdiv(NO * P, BLOCK)
    task = tl.program_id(0) // blocks  # k * G + g
    k = task // G
    theta = tl.load(ANGLES + k.to(tl.int64) * angle_stride)
    position = ((theta * NO).to(tl.float64) / TWO_PI).to(theta.dtype)
    whole = tl.floor(position)
    fraction = position - whole
    # (NaN, and whole numbers past int64's range, still give a shift in range)
    whole = tl.where(whole == whole, whole, 0.0)
    whole = tl.minimum(tl.maximum(whole, -(2.0**62)), 2.0**62)
    shift = ((whole.to(tl.int64) % NO) + NO) % NO
    cdt = OUT.dtype.element_ty
    right = (1 - fraction).to(cdt)
    left = fraction.to(cdt)
    e = (tl.program_id(0) % blocks) * BLOCK + tl.arange(0, BLOCK)
    ok = e < NO * P
    o = e // P
    p = e % P
    first = ((o - D * shift) % NO + NO) % NO
    second = (first + D + NO) % NO
    base = task.to(tl.int64) * NO * P
    a = tl.load(X + base + first * P + p, mask=ok, other=0.0).to(cdt)
    b = tl.load(X + base + second * P + p, mask=ok, other=0.0).to(cdt)
    tl.store(OUT + base + e, right * a + left * b, mask=ok)


def turn_orientations(x, angles, out, direction: int):
    """``out[K, G, NO, P]`` (contiguous, the compute dtype) from ``x`` (contiguous) and the
    RoIs' ``angles[K]`` (any stride): the forward's turn (``direction`` 1) or its
    gradient's (-1)."""
    K, G, orientations, P = x.shape
    if out.numel() == 0:
        return out
    launch = _launch(K, G, orientations, P, angles.stride(0), x.dtype, angles.dtype, out.dtype,
                     x.get_device(), direction)  # fmt: skip
    launch(x, angles, out)
    return out


@tiles.cached
def _launch(K, G, orientations, P, angle_stride, dtype, angle_dtype, out_dtype, device,
            direction) -> Launch:  # fmt: skip
    """``turn_orientations``'s launch for these sizes, dtypes and device: its tensors
    ``(x, angles, out)``."""
    block = min(BLOCK, triton.next_power_of_2(orientations * P))
    grid = (K * G * triton.cdiv(orientations * P, block),)
    return Launch(turn_orientations_kernel, grid, (G, P, angle_stride), NO=orientations,
                  D=direction, BLOCK=block, num_warps=max(1, min(8, block // 128)))  # fmt: skip
