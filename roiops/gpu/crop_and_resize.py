"""CropAndResize in Triton: forward, deterministic input and box gradients.

Forward: one program per (box, block of its outputs), each lane placing its sample and
reading its channel. Input gradient: one program per (box, sample, block of channels),
adding the sample's bilinear shares (or its nearest cell's) into the fixed-point
accumulator (``roiops.gpu.fixed_point``). Box gradient: one program per box, which
visits its samples and channels and writes the box's four sums (no atomics). Arithmetic
follows ``roiops.reference.crop_and_resize`` (IEEE division; compiled code may fuse a
multiply and an add, so GPU results agree with the reference to rounding, not bit for
bit). A box whose image index is bad or whose coordinates are not finite gives NaN
outputs and no gradient.
"""

from __future__ import annotations

import triton
import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, add_to_cell, fixed_point_scale
from roiops.gpu.launch import Launch
from roiops.gpu.rois import div_rn, from_bits, load_box, scale_bits
from roiops.gpu.tiles import (
    bin_channels_grid,
    bin_channels_tile,
    bins_grid,
    bins_tile,
    check_grid,
    kernel,
    store_bins,
)


@triton.jit
def _position(lo, hi, i, size, CROP: tl.constexpr):
    """(v, d_lo, d_hi): sample i's position along an axis of ``size`` cells between the
    box's edges ``lo`` and ``hi`` (normalized), and its derivatives w.r.t. them."""
    last = tl.zeros_like(lo) + (size - 1)
    if CROP == 1:
        v = 0.5 * (lo + hi) * last
        d_lo = 0.5 * last
        d_hi = d_lo
    else:
        index = tl.zeros_like(lo) + i  # (an int in a loop over samples in the interpreter)
        scale = div_rn((hi - lo) * last, CROP - 1)
        ratio = div_rn(last, CROP - 1)
        v = lo * last + index * scale
        d_lo = last - index * ratio
        d_hi = index * ratio
    return v, d_lo, d_hi


@triton.jit
def _cells(v, size):
    """(low, high, fraction, inside): the cells around ``v`` (``floor``, ``ceil``), its
    place between them, and whether it reads the image (NaN does not)."""
    inside = (v >= 0) & (v <= size - 1)
    v = tl.where(inside, v, 0.0)
    low = tl.floor(v)
    return low.to(tl.int32), tl.ceil(v).to(tl.int32), v - low, inside


@triton.jit
def _nearest(low, fraction):
    """C's ``roundf`` of a position in the image: halves up."""
    return low + (fraction >= 0.5).to(tl.int32)


@triton.jit
def _sample(ROIS, k, p, N, H, W, CH: tl.constexpr, CW: tl.constexpr):
    """(n, rows, cols, valid): box k's sample(s) p, ``_cells`` and derivatives of each
    axis; not valid (n = 0): a bad image index or a coordinate that is not finite."""
    n, y1, x1, y2, x2, valid = load_box(ROIS, k, N)  # (rows of (image, y1, x1, y2, x2))
    y, dy1, dy2 = _position(y1, y2, p // CW, H, CH)
    x, dx1, dx2 = _position(x1, x2, p % CW, W, CW)
    top, bottom, y_lerp, y_in = _cells(y, H)
    left, right, x_lerp, x_in = _cells(x, W)
    return (n, (top, bottom, y_lerp, y_in, dy1, dy2), (left, right, x_lerp, x_in, dx1, dx2),
            valid)  # fmt: skip


@kernel
def crop_and_resize_forward_kernel(
    X, ROIS, OUT, N, C, H, W, extrapolation_bits,
    CH: tl.constexpr, CW: tl.constexpr, NEAREST: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, CH, CW] from X[N, C, H, W] (NCHW) and ROIS[K, 5]: each box's crop; NaN
    for a box that is not valid."""
    k, c, p, ok = bins_tile(C, CH * CW, BLOCK, ROIS_INNER)
    n, rows, cols, valid = _sample(ROIS, k, p, N, H, W, CH, CW)
    top, bottom, y_lerp, y_in, _, _ = rows
    left, right, x_lerp, x_in, _, _ = cols
    dt = y_lerp.dtype
    plane = X + (n * C + c.to(tl.int64)) * H * W
    # (a scalar & a vector trips the interpreter, and with one sample an axis the sample's
    # place is the box's, a scalar: where)
    m = tl.where(valid, ok, False)
    m = tl.where(y_in, m, False)
    m = tl.where(x_in, m, False)
    if NEAREST:
        cell = _nearest(top, y_lerp).to(tl.int64) * W + _nearest(left, x_lerp)
        value = tl.load(plane + cell, mask=m, other=0.0).to(dt)
    else:
        tl_ = tl.load(plane + top.to(tl.int64) * W + left, mask=m, other=0.0).to(dt)
        tr = tl.load(plane + top.to(tl.int64) * W + right, mask=m, other=0.0).to(dt)
        bl = tl.load(plane + bottom.to(tl.int64) * W + left, mask=m, other=0.0).to(dt)
        br = tl.load(plane + bottom.to(tl.int64) * W + right, mask=m, other=0.0).to(dt)
        upper = tl_ + (tr - tl_) * x_lerp
        lower = bl + (br - bl) * x_lerp
        value = upper + (lower - upper) * y_lerp
    extrapolation = from_bits(extrapolation_bits, dt)
    value = tl.where(y_in, tl.where(x_in, value, extrapolation), extrapolation)
    value = tl.where(valid, value, float("nan"))
    store_bins(OUT, OUT, value, value, k, c, p, ok, C, CH * CW, False)


@kernel
def crop_and_resize_backward_kernel(
    G, ROIS, AMAX, ACC, N, C, H, W, log2_count,
    CH: tl.constexpr, CW: tl.constexpr, NEAREST: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += the gradient of one (box, sample, block of
    channels) from G[K, C, CH, CW]: the sample's bilinear shares (or all of it to its
    nearest cell); nothing from a box that is not valid or a sample outside the image."""
    k, p, c, c_ok = bin_channels_tile(C, CH * CW, BLOCK_C, ROIS_INNER)
    n, rows, cols, valid = _sample(ROIS, k, p, N, H, W, CH, CW)
    top, bottom, y_lerp, y_in, _, _ = rows
    left, right, x_lerp, x_in, _, _ = cols
    dt = y_lerp.dtype
    g = tl.load(G + (k.to(tl.int64) * C + c) * CH * CW + p, mask=c_ok, other=0.0).to(dt)
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    channel = ACC + n * H * W * C + c
    if y_in & x_in & valid:
        if NEAREST:
            cell = _nearest(top, y_lerp).to(tl.int64) * W + _nearest(left, x_lerp)
            add_to_cell(channel, cell, C, g, scale, c_ok)
        else:
            upper = (1.0 - y_lerp) * g
            lower = y_lerp * g
            add_to_cell(channel, top.to(tl.int64) * W + left, C, (1.0 - x_lerp) * upper, scale,
                        c_ok)  # fmt: skip
            add_to_cell(channel, top.to(tl.int64) * W + right, C, x_lerp * upper, scale, c_ok)
            add_to_cell(channel, bottom.to(tl.int64) * W + left, C, (1.0 - x_lerp) * lower,
                        scale, c_ok)  # fmt: skip
            add_to_cell(channel, bottom.to(tl.int64) * W + right, C, x_lerp * lower, scale, c_ok)


@kernel
def crop_and_resize_box_backward_kernel(
    G, X, ROIS, GRAD_BOXES, N, C, H, W,
    CH: tl.constexpr, CW: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """GRAD_BOXES[k, 4] (y1, x1, y2, x2) for one box k: over its samples and channels, the
    image's bilinear slopes times the output's gradient times each coordinate's
    derivative of the sample's position; 0 for a box that is not valid."""
    k = tl.program_id(0)
    dt = GRAD_BOXES.dtype.element_ty
    g_y1 = tl.zeros((), dt)
    g_x1 = tl.zeros((), dt)
    g_y2 = tl.zeros((), dt)
    g_x2 = tl.zeros((), dt)
    for p in range(0, CH * CW):
        n, rows, cols, valid = _sample(ROIS, k, p, N, H, W, CH, CW)
        top, bottom, y_lerp, y_in, dy1, dy2 = rows
        left, right, x_lerp, x_in, dx1, dx2 = cols
        if y_in & x_in & valid:
            for c0 in range(0, C, BLOCK_C):
                c = c0 + tl.arange(0, BLOCK_C)
                c_ok = c < C
                g = tl.load(G + (k.to(tl.int64) * C + c) * CH * CW + p, mask=c_ok, other=0.0)
                plane = X + (n * C + c.to(tl.int64)) * H * W
                tl_ = tl.load(plane + top.to(tl.int64) * W + left, mask=c_ok, other=0.0).to(dt)
                tr = tl.load(plane + top.to(tl.int64) * W + right, mask=c_ok, other=0.0).to(dt)
                bl = tl.load(plane + bottom.to(tl.int64) * W + left, mask=c_ok, other=0.0).to(dt)
                br = tl.load(plane + bottom.to(tl.int64) * W + right, mask=c_ok, other=0.0).to(dt)
                slope_y = ((1.0 - x_lerp) * (bl - tl_) + x_lerp * (br - tr)) * g.to(dt)
                slope_x = ((1.0 - y_lerp) * (tr - tl_) + y_lerp * (br - bl)) * g.to(dt)
                g_y1 += tl.sum(slope_y * dy1, axis=0)
                g_y2 += tl.sum(slope_y * dy2, axis=0)
                g_x1 += tl.sum(slope_x * dx1, axis=0)
                g_x2 += tl.sum(slope_x * dx2, axis=0)
    out = GRAD_BOXES + k.to(tl.int64) * 4
    tl.store(out, g_y1)
    tl.store(out + 1, g_x1)
    tl.store(out + 2, g_y2)
    tl.store(out + 3, g_x2)


# ----------------------------------------------------------------------------- launchers
def crop_and_resize_forward(input, rois, crop_h, crop_w, nearest, extrapolation_value):
    """``out[K, C, crop_h, crop_w]`` for ``input[N, C, H, W]`` (read as NCHW) and
    ``rois[K, 5]`` of (image, y1, x1, y2, x2)."""
    sizes = input.shape
    out = input.new_empty((rois.shape[0], sizes[1], crop_h, crop_w))
    launch = _forward_launch(sizes, input.dtype, input.get_device(), rois.shape[0], crop_h,
                             crop_w, nearest, extrapolation_value,
                             tiles.forward_rois_inner(False))  # fmt: skip
    launch(input.contiguous(), rois, out)
    return out


@tiles.cached
def _forward_launch(sizes, dtype, device, K, crop_h, crop_w, nearest, extrapolation_value,
                    rois_inner) -> Launch:  # fmt: skip
    """``crop_and_resize_forward``'s launch for a map of ``sizes`` (N, C, H, W) of
    ``dtype`` on ``device``, K boxes, these parameters and settings: its tensors
    ``(input, rois, out)``."""
    N, C, H, W = sizes
    grid, block, num_warps = bins_grid(K, C, crop_h, crop_w, "crop_and_resize")
    return Launch(crop_and_resize_forward_kernel, grid,
                  (N, C, H, W, scale_bits(extrapolation_value)), CH=crop_h, CW=crop_w,
                  NEAREST=nearest, BLOCK=block, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def crop_and_resize_backward(grad, rois, nearest, grad_input):
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, crop_h, crop_w]``."""
    sums = Accumulator(grad, grad_input.shape)
    launch = _backward_launch(grad_input.shape, rois.shape[0], grad.dtype, grad.get_device(),
                              *grad.shape[2:], nearest, sums.log2_count,
                              tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, sums.amax, sums.acc)
    return sums.write_to(grad_input)


@tiles.cached
def _backward_launch(sizes, K, dtype, device, crop_h, crop_w, nearest, log2_count,
                     rois_inner) -> Launch:  # fmt: skip
    """``crop_and_resize_backward``'s launch for K boxes' gradients of ``dtype`` on
    ``device`` into a map of ``sizes`` (N, C, H, W): its tensors ``(grad, rois, amax,
    acc)``."""
    N, C, H, W = sizes
    grid, block_c, num_warps = bin_channels_grid(K, C, crop_h, crop_w, "crop_and_resize")
    return Launch(crop_and_resize_backward_kernel, grid, (N, C, H, W, log2_count), CH=crop_h,
                  CW=crop_w, NEAREST=nearest, BLOCK_C=block_c, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def crop_and_resize_box_backward(grad, input, rois):
    """``Tensor[K, 4]``: the gradient w.r.t. the boxes (y1, x1, y2, x2), bilinear,
    deterministic."""
    N, C, H, W = input.shape
    K, _, crop_h, crop_w = grad.shape
    grad_boxes = rois.new_empty((K, 4))
    block_c = min(tiles.BACKWARD_CHANNELS, tiles.next_power_of_2(C))
    crop_and_resize_box_backward_kernel[check_grid(K, "crop_and_resize")](
        grad.contiguous(), input.contiguous(), rois, grad_boxes, N, C, H, W,
        CH=crop_h, CW=crop_w, BLOCK_C=block_c, num_warps=max(1, block_c // 32),
    )  # fmt: skip
    return grad_boxes
