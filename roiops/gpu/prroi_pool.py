"""Precise RoI Pooling in Triton: forward, deterministic input and box gradients.

Formula for formula ``roiops.reference.prroi_pool``. Forward: one program per (RoI,
block of its outputs), each lane integrating its bin cell by cell. Input gradient: one
program per (RoI, bin, block of channels) adding each cell corner's share into the
fixed-point accumulator (``roiops.gpu.fixed_point``). Box gradient: the same programs
write their partial sums, which the launcher adds per RoI in a fixed order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from roiops.gpu import tiles
from roiops.gpu.fixed_point import Accumulator, add_to_cell, fixed_point_scale
from roiops.gpu.launch import Launch
from roiops.gpu.rois import div_rn, from_bits, load_roi, scale_bits
from roiops.gpu.tiles import (
    bin_channels_grid,
    bin_channels_tile,
    bins_grid,
    bins_tile,
    kernel,
    output_offsets,
    store_bins,
)


@triton.jit
def _window(ROIS, k, N, SCALE_BITS, ph, pw, PH: tl.constexpr, PW: tl.constexpr):
    """(n, y0, x0, y1, x1, area, bin_h, bin_w, valid) of bins (ph, pw) of RoI k."""
    n, x1, y1, x2, y2, valid = load_roi(ROIS, k, N, SCALE_BITS)
    bin_h = div_rn(tl.maximum(y2 - y1, 0.0), PH)
    bin_w = div_rn(tl.maximum(x2 - x1, 0.0), PW)
    start_w = x1 + bin_w * pw
    start_h = y1 + bin_h * ph
    area = tl.maximum(bin_w * bin_h, 0.0)
    return n, start_h, start_w, start_h + bin_h, start_w + bin_w, area, bin_h, bin_w, valid


@triton.jit
def cell_range(lo, hi, size):
    """``(first, end)``: the unit cells ``[c, c + 1)`` that meet ``[lo, hi]`` along an axis
    of ``size`` cells, those from -1 to size - 1 only (cells beyond add zero:
    ``roiops.reference.prroi_pool.cell_range``); clamped before the conversion, which a
    box far past the map would overflow."""
    limit = size.to(lo.dtype)
    first = tl.floor(tl.minimum(tl.maximum(lo, -1.0), limit)).to(tl.int32)
    return first, tl.ceil(tl.maximum(tl.minimum(hi, limit), -1.0)).to(tl.int32)


@triton.jit
def _ramp(lo, hi):
    """int_lo^hi (1 - a) da."""
    return hi - 0.5 * hi * hi - lo + 0.5 * lo * lo


@triton.jit
def _cell(h, w, y0, x0, y1, x1):
    """The window's part in unit cell (h, w) and its four corners' coefficients."""
    hf = h.to(y0.dtype)
    wf = w.to(x0.dtype)
    cy0 = tl.maximum(y0, hf)
    cx0 = tl.maximum(x0, wf)
    cy1 = tl.minimum(y1, hf + 1.0)
    cx1 = tl.minimum(x1, wf + 1.0)
    a0 = _ramp(cx0 - wf, cx1 - wf)
    a1 = _ramp(wf + 1.0 - cx1, wf + 1.0 - cx0)
    b0 = _ramp(cy0 - hf, cy1 - hf)
    b1 = _ramp(hf + 1.0 - cy1, hf + 1.0 - cy0)
    return a0 * b0, a1 * b0, a0 * b1, a1 * b1


@triton.jit
def _value(plane, h, w, H, W, mask):
    """plane[h, w], 0 outside the map (zero padding)."""
    inside = mask & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    return tl.load(plane + h * W + w, mask=inside, other=0.0)


@kernel
def prroi_pool_forward_kernel(
    X, ROIS, OUT, N, C, H, W, scale_bits,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """OUT[K, C, PH, PW] from X[N, C, H, W]: each bin's integral / its area."""
    k, c, p, ok = bins_tile(C, PH * PW, BLOCK, ROIS_INNER)
    n, y0, x0, y1, x1, area, bin_h, bin_w, valid = _window(
        ROIS, k, N, scale_bits, p // PW, p % PW, PH, PW
    )
    acc_dtype = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    plane = X + (n * C + c.to(tl.int64)) * H * W
    acc = tl.zeros((BLOCK,), acc_dtype)
    h_first, h_end = cell_range(y0, y1, H)
    w_first, w_end = cell_range(x0, x1, W)
    # a bin meets at most floor(size) + 2 cells per axis, and the map's H + 1 rows of
    # cells that can add (none if the RoI is invalid)
    span_h = tl.minimum(tl.floor(bin_h) + 2.0, (H + 1).to(bin_h.dtype)).to(tl.int32)
    span_w = tl.minimum(tl.floor(bin_w) + 2.0, (W + 1).to(bin_w.dtype)).to(tl.int32)
    span_h = tl.where(valid, span_h, 0)
    span_w = tl.where(valid, span_w, 0)
    for dw in range(0, span_w):
        for dh in range(0, span_h):
            h = h_first + dh
            w = w_first + dw
            m = ok & (h < h_end) & (w < w_end)
            c1, c2, c3, c4 = _cell(h, w, y0, x0, y1, x1)
            term = _value(plane, h, w, H, W, m).to(acc_dtype) * c1
            term += _value(plane, h, w + 1, H, W, m).to(acc_dtype) * c2
            term += _value(plane, h + 1, w, H, W, m).to(acc_dtype) * c3
            term += _value(plane, h + 1, w + 1, H, W, m).to(acc_dtype) * c4
            acc += tl.where(m, term, 0.0)
    value = tl.where(area == 0, 0.0, div_rn(acc, tl.where(area == 0, 1.0, area)))
    value = tl.where(valid, value, float("nan"))
    store_bins(OUT, OUT, value, value, k, c, p, ok, C, PH * PW, False)


@kernel
def prroi_pool_backward_kernel(
    G, ROIS, AMAX, ACC, N, C, H, W, scale_bits, log2_count,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK_C: tl.constexpr,
    ROIS_INNER: tl.constexpr = False,
):  # fmt: skip
    """ACC[N, H, W, C] (int64 fixed point) += grad / area times each corner's coefficient,
    for one (RoI, bin, block of channels)."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C, ROIS_INNER)
    n, y0, x0, y1, x1, area, _, _, valid = _window(ROIS, k, N, scale_bits, p // PW, p % PW, PH, PW)
    dt = y0.dtype
    g_at, _ = output_offsets(k, c, p, C, PH * PW)
    g = tl.load(G + g_at, mask=c_ok, other=0.0).to(dt)
    share = div_rn(g, tl.where(area == 0, 1.0, area))
    scale, _, _ = fixed_point_scale(AMAX, log2_count)
    channel = ACC + n * H * W * C + c
    live = valid & (area > 0)
    w_first, w_end = cell_range(x0, x1, W)
    w_first = tl.where(live, w_first, 0)
    w_end = tl.where(live, w_end, 0)
    h_first, h_end = cell_range(y0, y1, H)
    for w in range(w_first, w_end):
        for h in range(h_first, h_end):
            c1, c2, c3, c4 = _cell(tl.cast(h, tl.int32), tl.cast(w, tl.int32), y0, x0, y1, x1)
            for i in tl.static_range(4):
                hh = h + i // 2
                ww = w + i % 2
                coefficient = c1 if i == 0 else (c2 if i == 1 else (c3 if i == 2 else c4))
                if (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W):
                    add_to_cell(channel, tl.cast(hh * W + ww, tl.int64), C, share * coefficient,
                                scale, c_ok)  # fmt: skip


@triton.jit
def _interpolate(plane, y, x, H, W, mask):
    """The zero-padded bilinear interpolant at (y, x), per lane."""
    fy = tl.floor(y)
    fx = tl.floor(x)
    h0 = fy.to(tl.int32)
    w0 = fx.to(tl.int32)
    dt = y.dtype
    total = _value(plane, h0, w0, H, W, mask).to(dt) * (
        (1.0 - tl.abs(y - fy)) * (1.0 - tl.abs(x - fx))
    )
    total += _value(plane, h0, w0 + 1, H, W, mask).to(dt) * (
        (1.0 - tl.abs(y - fy)) * (1.0 - tl.abs(x - (fx + 1.0)))
    )
    total += _value(plane, h0 + 1, w0, H, W, mask).to(dt) * (
        (1.0 - tl.abs(y - (fy + 1.0))) * (1.0 - tl.abs(x - fx))
    )
    total += _value(plane, h0 + 1, w0 + 1, H, W, mask).to(dt) * (
        (1.0 - tl.abs(y - (fy + 1.0))) * (1.0 - tl.abs(x - (fx + 1.0)))
    )
    return total


@triton.jit
def _edge(s, t, c1, c2):
    """int_s^t of the linear interpolation from c1 (at 0) to c2 (at 1)."""
    return 0.5 * (t * t - s * s) * c2 + (t - 0.5 * t * t - s + 0.5 * s * s) * c1


@kernel
def prroi_pool_box_backward_kernel(
    G, X, ROIS, OUT, PARTIAL, N, C, H, W, scale_bits,
    PH: tl.constexpr, PW: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """PARTIAL[program, 4]: one (RoI, bin, block of channels)'s share of the gradient
    w.r.t. (x1, y1, x2, y2), given the forward output OUT."""
    k, p, c, c_ok = bin_channels_tile(C, PH * PW, BLOCK_C)
    ph = p // PW
    pw = p % PW
    n, y0, x0, y1, x1, area, _, _, valid = _window(ROIS, k, N, scale_bits, ph, pw, PH, PW)
    dt = y0.dtype
    spatial_scale = from_bits(scale_bits, dt)
    g_at, _ = output_offsets(k, c, p, C, PH * PW)
    live = valid & (area > 0)
    m = tl.where(live, c_ok, False)
    g = tl.load(G + g_at, mask=m, other=0.0).to(dt)
    value = tl.load(OUT + g_at, mask=m, other=0.0).to(dt)
    plane = X + (n * C + c.to(tl.int64)) * H * W
    g_x1 = tl.zeros_like(g)
    g_x2 = tl.zeros_like(g)
    g_y1 = tl.zeros_like(g)
    g_y2 = tl.zeros_like(g)
    h_first, h_end = cell_range(y0, y1, H)
    for h in range(tl.where(live, h_first, 0), tl.where(live, h_end, 0)):
        hf = tl.cast(h, dt)
        s = tl.maximum(y0, hf) - hf
        t = tl.minimum(y1, hf + 1.0) - hf
        g_x1 += _edge(
            s, t, _interpolate(plane, hf, x0, H, W, m), _interpolate(plane, hf + 1.0, x0, H, W, m)
        )
        g_x2 += _edge(
            s, t, _interpolate(plane, hf, x1, H, W, m), _interpolate(plane, hf + 1.0, x1, H, W, m)
        )
    w_first, w_end = cell_range(x0, x1, W)
    for w in range(tl.where(live, w_first, 0), tl.where(live, w_end, 0)):
        wf = tl.cast(w, dt)
        s = tl.maximum(x0, wf) - wf
        t = tl.minimum(x1, wf + 1.0) - wf
        g_y1 += _edge(
            s, t, _interpolate(plane, y0, wf, H, W, m), _interpolate(plane, y0, wf + 1.0, H, W, m)
        )
        g_y2 += _edge(
            s, t, _interpolate(plane, y1, wf, H, W, m), _interpolate(plane, y1, wf + 1.0, H, W, m)
        )
    safe_area = tl.where(live, area, 1.0)
    d_x1 = div_rn(-g_x1 + (y1 - y0) * value, safe_area) * spatial_scale
    d_y1 = div_rn(-g_y1 + (x1 - x0) * value, safe_area) * spatial_scale
    d_x2 = div_rn(g_x2 - (y1 - y0) * value, safe_area) * spatial_scale
    d_y2 = div_rn(g_y2 - (x1 - x0) * value, safe_area) * spatial_scale
    t0_w = div_rn(pw.to(dt), PW * 1.0)
    t1_w = div_rn((pw + 1).to(dt), PW * 1.0)
    t0_h = div_rn(ph.to(dt), PH * 1.0)
    t1_h = div_rn((ph + 1).to(dt), PH * 1.0)
    out = PARTIAL + tl.program_id(0).to(tl.int64) * 4
    tl.store(out, tl.sum(tl.where(m, (d_x1 * (1.0 - t0_w) + d_x2 * (1.0 - t1_w)) * g, 0.0), axis=0))
    tl.store(
        out + 1, tl.sum(tl.where(m, (d_y1 * (1.0 - t0_h) + d_y2 * (1.0 - t1_h)) * g, 0.0), axis=0)
    )
    tl.store(out + 2, tl.sum(tl.where(m, (d_x2 * t1_w + d_x1 * t0_w) * g, 0.0), axis=0))
    tl.store(out + 3, tl.sum(tl.where(m, (d_y2 * t1_h + d_y1 * t0_h) * g, 0.0), axis=0))


# ----------------------------------------------------------------------------- launchers
def prroi_pool_forward(input, rois, spatial_scale, pooled_h, pooled_w):
    sizes = input.shape
    out = input.new_empty((rois.shape[0], sizes[1], pooled_h, pooled_w))
    launch = _forward_launch(sizes, input.dtype, input.get_device(), rois.shape[0],
                             spatial_scale, pooled_h, pooled_w,
                             tiles.GATHER_ROIS_INNER)  # fmt: skip
    launch(input.contiguous(), rois, out)
    return out


@tiles.cached
def _forward_launch(sizes, dtype, device, K, spatial_scale, pooled_h, pooled_w,
                    rois_inner) -> Launch:  # fmt: skip
    """``prroi_pool_forward``'s launch for a map of ``sizes`` (N, C, H, W) of ``dtype`` on
    ``device``, K RoIs, these parameters and settings: its tensors ``(input, rois,
    out)``."""
    N, C, H, W = sizes
    grid, block, num_warps = bins_grid(K, C, pooled_h, pooled_w, "prroi_pool")
    return Launch(prroi_pool_forward_kernel, grid, (N, C, H, W, scale_bits(spatial_scale)),
                  PH=pooled_h, PW=pooled_w, BLOCK=block, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def prroi_pool_backward(grad, rois, grad_input, spatial_scale):
    """Write every cell of ``grad_input`` (any strides) for ``grad[K, C, ph, pw]``."""
    sums = Accumulator(grad, grad_input.shape)
    launch = _backward_launch(grad_input.shape, grad.shape, grad.dtype, grad.get_device(),
                              spatial_scale, sums.log2_count,
                              tiles.SCATTER_ROIS_INNER)  # fmt: skip
    launch(grad.contiguous(), rois, sums.amax, sums.acc)
    return sums.write_to(grad_input)


@tiles.cached
def _backward_launch(sizes, grad_sizes, dtype, device, spatial_scale, log2_count,
                     rois_inner) -> Launch:  # fmt: skip
    """``prroi_pool_backward``'s launch for ``grad`` of ``grad_sizes`` (K, C, ph, pw) and
    ``dtype`` on ``device`` into a map of ``sizes`` (N, C, H, W), these parameters and
    settings: its tensors ``(grad, rois, amax, acc)``."""
    N, C, H, W = sizes
    K, _, pooled_h, pooled_w = grad_sizes
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "prroi_pool")
    return Launch(prroi_pool_backward_kernel, grid,
                  (N, C, H, W, scale_bits(spatial_scale), log2_count), PH=pooled_h,
                  PW=pooled_w, BLOCK_C=block_c, ROIS_INNER=rois_inner,
                  num_warps=num_warps)  # fmt: skip


def prroi_pool_box_backward(grad, input, rois, output, spatial_scale):
    """``Tensor[K, 5]``: the gradient w.r.t. ``rois`` (column 0 is 0), deterministic."""
    K, C, pooled_h, pooled_w = grad.shape
    N, _, H, W = input.shape
    grid, block_c, num_warps = bin_channels_grid(K, C, pooled_h, pooled_w, "prroi_pool")
    partial = rois.new_empty((grid[0], 4))
    prroi_pool_box_backward_kernel[grid](
        grad.contiguous(), input.contiguous(), rois, output.contiguous(), partial, N, C, H, W,
        scale_bits(spatial_scale), PH=pooled_h, PW=pooled_w, BLOCK_C=block_c,
        num_warps=num_warps,
    )  # fmt: skip
    sums = partial.view(K, -1, 4).sum(dim=1)
    return torch.cat([torch.zeros_like(sums[:, :1]), sums], dim=1)
