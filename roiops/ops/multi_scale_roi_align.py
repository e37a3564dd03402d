"""Multi-scale RoIAlign (FPN pooler) as custom ops: ``roiops::multi_scale_roi_align`` and
its backward, every pyramid level in one kernel launch; likewise RoIPool
(``roiops::multi_scale_roi_pool``) and rotated RoIAlign
(``roiops::multi_scale_roi_align_rotated``, detectron2's ``ROIAlignRotated`` pooler).

``features`` is the list of levels ``[N, C, H_l, W_l]``, ``levels[K]`` (int64) the level
of each RoI and ``scales[l]`` each level's spatial_scale. The input gradients follow
``roiops._layout`` (channels_last on CPU, NCHW on CUDA), one per level.
"""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops._backend import would_serve
from roiops._layout import (
    argmax_shape,
    fake_input_grad,
    new_argmax,
    new_input_grad,
    pyramid_argmax_channel_major,
)
from roiops.cpu import layout
from roiops.cpu import multi_scale_roi_align as cpu
from roiops.onnx import refuse_custom_op
from roiops.ops import (
    argmax_from_reference,
    argmax_to_reference,
    call,
    checked_backend,
    custom_op,
    forward_op,
    host_array,
    register_autograd,
)
from roiops.ops.roi_align_rotated import angle_unit_name
from roiops.reference import multi_scale_roi_align as reference

OP = "multi_scale_roi_align"
POOL = "multi_scale_roi_pool"
ROTATED = "multi_scale_roi_align_rotated"


def _checked_backend(device, rois, levels, batch_size, num_levels, grid=None, rotated=False,
                     op=OP, scales=None):  # fmt: skip
    """``checked_backend``, the RoIs' pyramid levels checked too (where that is free);
    ``grid``, the RoIAlign pooler's ``(scales, pooled_height, pooled_width,
    sampling_ratio, aligned)``: its adaptive grids too, each RoI at its level's scale;
    ``rotated``: rotated RoIs (``rois[K, 6]``), whose sizes must not be negative when
    aligned; ``scales`` (or the grid's): the boxes scaled by their levels' must be
    finite (``_validate.check_scaled_boxes``; not rotated RoIs)."""
    checks = [lambda: _validate.check_levels(levels, num_levels, op)]
    if grid is not None:
        scales = grid[0]

    def level_scales() -> Tensor:
        return rois.new_tensor(scales, dtype=torch.float64)[levels.long()]

    if rotated and grid[4]:
        checks.append(lambda: _validate.check_rotated_sizes(rois, op))
    if scales is not None and not rotated:
        checks.append(lambda: _validate.check_scaled_boxes(rois, level_scales(), op))
    if grid is not None and grid[3] <= 0:
        _, pooled_height, pooled_width, _, aligned = grid
        checks.append(lambda: _validate.check_adaptive_grid(
            rois, level_scales(), pooled_height, pooled_width, 0, aligned, op,
            rotated))  # fmt: skip
    return checked_backend(device, rois, batch_size, op, *checks)


def _numba_pyramid(xs, rois, levels, scales) -> tuple:
    """The Numba pyramid kernels' leading arguments: the levels channels-last, the RoIs,
    their levels and the levels' scales."""
    levels_nhwc = tuple(layout.channels_last_array(x) for x in xs)
    return levels_nhwc, rois.numpy(), levels.numpy(), _scales_array(scales)


def _scales_array(scales: list[float]):
    return torch.tensor(scales, dtype=torch.float64).numpy()


def _copy_from(refs: list, grads: list[Tensor]) -> None:
    """The reference's gradients (NumPy arrays) into the levels' gradient tensors."""
    for gx, ref in zip(grads, refs, strict=True):
        gx.copy_(torch.from_numpy(ref))


def _readable(features: list[Tensor]) -> list[Tensor]:
    """The levels as the RoIAlign kernels read them: a level without rows or columns
    (nothing to read) as one zero cell, so that a RoI on it pools zeros and its gradient
    lands in a cell thrown away (the kernels clamp each point into its level, which needs
    a cell to clamp to)."""
    return [
        f if f.shape[2] and f.shape[3] else f.new_zeros((f.shape[0], f.shape[1], 1, 1))
        for f in features
    ]


def _readable_shapes(shapes: list[tuple]) -> list[tuple]:
    """The levels' shapes as ``_readable`` gives them to the kernels."""
    return [s if s[2] and s[3] else (s[0], s[1], 1, 1) for s in shapes]


def _level_grads(grads: list[Tensor], shapes: list[tuple], dtype, device) -> list[Tensor]:
    """The gradients of the levels of ``shapes``, from those computed on ``_readable``'s
    levels (a level without rows or columns gets its empty gradient), in ``dtype``."""
    return [
        gx.to(dtype) if gx.shape == s else new_input_grad(s, dtype, device)
        for gx, s in zip(grads, shapes, strict=True)
    ]


@forward_op("roiops::multi_scale_roi_align")
def multi_scale_roi_align_op(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """``Tensor[K, C, pooled_height, pooled_width]``, RoI k from ``features[levels[k]]``."""
    first = features[0]
    grid = (scales, pooled_height, pooled_width, sampling_ratio, aligned)
    backend = _checked_backend(first.device, rois, levels, first.shape[0], len(features), grid)
    shape = (rois.shape[0], first.shape[1], pooled_height, pooled_width)
    if rois.shape[0] == 0 or first.shape[1] == 0:
        return first.new_zeros(shape)
    features = _readable(features)
    if backend == "triton":
        from roiops.gpu import multi_scale_roi_align as gpu

        for f in features:
            _validate.check_plane_indexable(f.shape, OP)
        return gpu.multi_scale_roi_align_forward(
            features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned
        )
    xs = [f.to(_validate.compute_dtype(f.dtype)) for f in features]
    if backend == "numba":
        out = xs[0].new_empty(shape)
        cpu.multi_scale_roi_align_forward(
            *_numba_pyramid(xs, rois, levels, scales), pooled_height, pooled_width,
            sampling_ratio, aligned, out.numpy(),
        )  # fmt: skip
        return out.to(first.dtype)
    out = reference.multi_scale_roi_align_forward(
        [host_array(x) for x in xs], host_array(rois), host_array(levels), scales,
        pooled_height, pooled_width, sampling_ratio, aligned,
    )  # fmt: skip
    return torch.from_numpy(out).to(first.device, first.dtype)


@multi_scale_roi_align_op.register_fake
def _(features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned):
    refuse_custom_op("multi_scale_roi_align")
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_height, pooled_width))


@custom_op("roiops::multi_scale_roi_align_backward")
def multi_scale_roi_align_backward_op(
    grad: Tensor,
    rois: Tensor,
    levels: Tensor,
    scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    batch_size: int,
    channels: int,
    heights: list[int],
    widths: list[int],
) -> list[Tensor]:
    """The gradient w.r.t. every level (deterministic)."""
    shapes = [(batch_size, channels, h, w) for h, w in zip(heights, widths, strict=True)]
    if grad.numel() == 0:
        return [new_input_grad(s, grad.dtype, grad.device) for s in shapes]
    grid = (scales, pooled_height, pooled_width, sampling_ratio, aligned)
    backend = _checked_backend(grad.device, rois, levels, batch_size, len(shapes), grid)
    readable = _readable_shapes(shapes)
    if backend == "triton":
        from roiops.gpu import multi_scale_roi_align as gpu

        grads = [new_input_grad(s, grad.dtype, grad.device, zeroed=False) for s in readable]
        grads = gpu.multi_scale_roi_align_backward(
            grad, rois, levels, scales, grads, sampling_ratio, aligned
        )
        return _level_grads(grads, shapes, grad.dtype, grad.device)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grads = [new_input_grad(s, g.dtype, g.device) for s in readable]
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        cpu.multi_scale_roi_align_backward(
            g.contiguous().numpy(), rois.numpy(), levels.numpy(), order, start,
            _scales_array(scales), pooled_height, pooled_width,
            sampling_ratio, aligned, block, tuple(layout.grad_array(gx) for gx in grads),
        )  # fmt: skip
    else:
        refs = reference.multi_scale_roi_align_backward(
            host_array(g), host_array(rois), host_array(levels), scales, pooled_height,
            pooled_width, sampling_ratio, aligned, readable,
        )  # fmt: skip
        _copy_from(refs, grads)
    return _level_grads(grads, shapes, grad.dtype, grad.device)


@multi_scale_roi_align_backward_op.register_fake
def _(grad, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned,
      batch_size, channels, heights, widths):  # fmt: skip
    return _fake_level_grads(grad, batch_size, channels, heights, widths)


def _setup_context(ctx, inputs, output):
    """(RoIAlign and rotated RoIAlign over a pyramid) keeps the RoIs, their levels, the
    op's parameters and the levels' sizes."""
    features, rois, levels, *params = inputs
    ctx.save_for_backward(rois, levels)
    ctx.params = params
    ctx.sizes = _pyramid_sizes(features)


def _pyramid_sizes(features):
    """``(batch_size, channels, heights, widths)`` of the levels: the backward ops'
    last arguments."""
    return (
        features[0].shape[0],
        features[0].shape[1],
        [f.shape[2] for f in features],
        [f.shape[3] for f in features],
    )


def _backward_through(backward_op):
    """The autograd formula of a forward op whose backward is ``backward_op(grad, rois,
    levels, *params, *sizes)``: gradients for the levels alone."""

    def backward(ctx, grad):
        rois, levels = ctx.saved_tensors
        grads = call(backward_op, grad, rois, levels, *ctx.params, *ctx.sizes)
        return list(grads), *([None] * (2 + len(ctx.params)))

    return backward


def _fake_level_grads(grad, batch_size, channels, heights, widths):
    return [
        fake_input_grad(grad, batch_size, channels, h, w)
        for h, w in zip(heights, widths, strict=True)
    ]


register_autograd(
    multi_scale_roi_align_op, _backward_through(multi_scale_roi_align_backward_op), _setup_context
)


# ------------------------------------------------------------------ RoIPool over a pyramid
@forward_op("roiops::multi_scale_roi_pool")
def multi_scale_roi_pool_op(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: list[float],
    pooled_height: int,
    pooled_width: int,
) -> tuple[Tensor, Tensor]:
    """``(output, argmax)``: RoI k max-pooled (RoIPool) from ``features[levels[k]]``;
    ``argmax[K, ph, pw, C]`` holds cells of each RoI's level (``roiops._layout``)."""
    first = features[0]
    backend = _checked_backend(first.device, rois, levels, first.shape[0], len(features),
                               op=POOL, scales=scales)  # fmt: skip
    shape = (rois.shape[0], first.shape[1], pooled_height, pooled_width)
    arg_shape = argmax_shape(*shape)
    if rois.shape[0] == 0 or first.shape[1] == 0:
        argmax = new_argmax(first, shape, pyramid_argmax_channel_major(backend))
        return first.new_zeros(shape), argmax.fill_(-1)
    for f in features:
        _validate.check_plane_indexable(f.shape, POOL)
    if backend == "triton":
        from roiops.gpu import multi_scale_roi_align as gpu

        return gpu.multi_scale_roi_pool_forward(
            features, rois, levels, scales, pooled_height, pooled_width
        )
    xs = [f.to(_validate.compute_dtype(f.dtype)) for f in features]
    if backend == "numba":
        out = xs[0].new_empty(shape)
        argmax = torch.empty(arg_shape, dtype=torch.int32)
        cpu.multi_scale_roi_pool_forward(
            *_numba_pyramid(xs, rois, levels, scales), pooled_height, pooled_width,
            out.numpy(), argmax.numpy(),
        )  # fmt: skip
        return out.to(first.dtype), argmax
    out, argmax = reference.multi_scale_roi_pool_forward(
        [host_array(x) for x in xs], host_array(rois), host_array(levels), scales,
        pooled_height, pooled_width,
    )  # fmt: skip
    out = torch.from_numpy(out).to(first.device, first.dtype)
    return out, argmax_from_reference(argmax, first.device)


@multi_scale_roi_pool_op.register_fake
def _(features, rois, levels, scales, pooled_height, pooled_width):
    refuse_custom_op("multi_scale_roi_pool")
    shape = (rois.shape[0], features[0].shape[1], pooled_height, pooled_width)
    channel_major = pyramid_argmax_channel_major(would_serve(features[0].device))
    return features[0].new_empty(shape), new_argmax(features[0], shape, channel_major)


@custom_op("roiops::multi_scale_roi_pool_backward")
def multi_scale_roi_pool_backward_op(
    grad: Tensor,
    argmax: Tensor,
    rois: Tensor,
    levels: Tensor,
    batch_size: int,
    channels: int,
    heights: list[int],
    widths: list[int],
) -> list[Tensor]:
    """The gradient w.r.t. every level: argmax routing, deterministic."""
    shapes = [(batch_size, channels, h, w) for h, w in zip(heights, widths, strict=True)]
    if grad.numel() == 0:
        return [new_input_grad(s, grad.dtype, grad.device) for s in shapes]
    backend = _checked_backend(grad.device, rois, levels, batch_size, len(shapes), op=POOL)
    if backend == "triton":
        from roiops.gpu import multi_scale_roi_align as gpu

        grads = [new_input_grad(s, grad.dtype, grad.device, zeroed=False) for s in shapes]
        return gpu.multi_scale_roi_pool_backward(grad, argmax, rois, levels, grads)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grads = [new_input_grad(s, g.dtype, g.device) for s in shapes]
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        cpu.multi_scale_roi_pool_backward(
            g.contiguous().numpy(), argmax.contiguous().numpy(), rois.numpy(), levels.numpy(),
            order, start, block, tuple(layout.grad_array(gx) for gx in grads),
        )  # fmt: skip
    else:
        refs = reference.multi_scale_roi_pool_backward(
            host_array(g), host_array(rois), host_array(levels), argmax_to_reference(argmax),
            shapes,
        )  # fmt: skip
        _copy_from(refs, grads)
    return [gx.to(grad.dtype) for gx in grads]


@multi_scale_roi_pool_backward_op.register_fake
def _(grad, argmax, rois, levels, batch_size, channels, heights, widths):
    return _fake_level_grads(grad, batch_size, channels, heights, widths)


def _pool_setup_context(ctx, inputs, output):
    features, rois, levels, scales, pooled_height, pooled_width = inputs
    ctx.save_for_backward(output[1], rois, levels)
    ctx.sizes = _pyramid_sizes(features)


def _pool_backward(ctx, grad, _grad_argmax):
    argmax, rois, levels = ctx.saved_tensors
    grads = call(multi_scale_roi_pool_backward_op, grad, argmax, rois, levels, *ctx.sizes)
    return list(grads), None, None, None, None, None


register_autograd(multi_scale_roi_pool_op, _pool_backward, _pool_setup_context)


# ----------------------------------------------------------- rotated RoIAlign over a pyramid
@forward_op("roiops::multi_scale_roi_align_rotated")
def multi_scale_roi_align_rotated_op(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    degrees: bool,
    clockwise: bool,
) -> Tensor:
    """``Tensor[K, C, pooled_height, pooled_width]``, rotated RoI k (``rois[K, 6]``) from
    ``features[levels[k]]`` (angle read as ``roiops::roi_align_rotated`` reads it)."""
    first = features[0]
    grid = (scales, pooled_height, pooled_width, sampling_ratio, aligned)
    backend = _checked_backend(first.device, rois, levels, first.shape[0], len(features), grid,
                               True, ROTATED)  # fmt: skip
    shape = (rois.shape[0], first.shape[1], pooled_height, pooled_width)
    if rois.shape[0] == 0 or first.shape[1] == 0:
        return first.new_zeros(shape)
    features = _readable(features)
    args = (pooled_height, pooled_width, sampling_ratio, aligned)
    if backend == "triton":
        from roiops.gpu import multi_scale_roi_align as gpu

        for f in features:
            _validate.check_plane_indexable(f.shape, ROTATED)
        return gpu.multi_scale_roi_align_rotated_forward(
            features, rois, levels, scales, *args, degrees, clockwise
        )
    xs = [f.to(_validate.compute_dtype(f.dtype)) for f in features]
    if backend == "numba":
        out = xs[0].new_empty(shape)
        cpu.multi_scale_roi_align_rotated_forward(
            *_numba_pyramid(xs, rois, levels, scales), *args, degrees, clockwise,
            out.numpy(),
        )  # fmt: skip
        return out.to(first.dtype)
    out = reference.multi_scale_roi_align_rotated_forward(
        [host_array(x) for x in xs], host_array(rois), host_array(levels), scales, *args,
        angle_unit_name(degrees), clockwise,
    )  # fmt: skip
    return torch.from_numpy(out).to(first.device, first.dtype)


@multi_scale_roi_align_rotated_op.register_fake
def _(features, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned,
      degrees, clockwise):  # fmt: skip
    refuse_custom_op(ROTATED)
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_height, pooled_width))


@custom_op("roiops::multi_scale_roi_align_rotated_backward")
def multi_scale_roi_align_rotated_backward_op(
    grad: Tensor,
    rois: Tensor,
    levels: Tensor,
    scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    degrees: bool,
    clockwise: bool,
    batch_size: int,
    channels: int,
    heights: list[int],
    widths: list[int],
) -> list[Tensor]:
    """The gradient w.r.t. every level (deterministic)."""
    shapes = [(batch_size, channels, h, w) for h, w in zip(heights, widths, strict=True)]
    if grad.numel() == 0:
        return [new_input_grad(s, grad.dtype, grad.device) for s in shapes]
    grid = (scales, pooled_height, pooled_width, sampling_ratio, aligned)
    backend = _checked_backend(grad.device, rois, levels, batch_size, len(shapes), grid, True,
                               ROTATED)  # fmt: skip
    args = (pooled_height, pooled_width, sampling_ratio, aligned)
    readable = _readable_shapes(shapes)
    if backend == "triton":
        from roiops.gpu import multi_scale_roi_align as gpu

        grads = [new_input_grad(s, grad.dtype, grad.device, zeroed=False) for s in readable]
        grads = gpu.multi_scale_roi_align_rotated_backward(
            grad, rois, levels, scales, grads, sampling_ratio, aligned, degrees, clockwise
        )
        return _level_grads(grads, shapes, grad.dtype, grad.device)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grads = [new_input_grad(s, g.dtype, g.device) for s in readable]
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        cpu.multi_scale_roi_align_rotated_backward(
            g.contiguous().numpy(), rois.numpy(), levels.numpy(), order, start,
            _scales_array(scales), *args, degrees, clockwise, block,
            tuple(layout.grad_array(gx) for gx in grads),
        )  # fmt: skip
    else:
        refs = reference.multi_scale_roi_align_rotated_backward(
            host_array(g), host_array(rois), host_array(levels), scales, *args, readable,
            angle_unit_name(degrees), clockwise,
        )  # fmt: skip
        _copy_from(refs, grads)
    return _level_grads(grads, shapes, grad.dtype, grad.device)


@multi_scale_roi_align_rotated_backward_op.register_fake
def _(grad, rois, levels, scales, pooled_height, pooled_width, sampling_ratio, aligned, degrees,
      clockwise, batch_size, channels, heights, widths):  # fmt: skip
    return _fake_level_grads(grad, batch_size, channels, heights, widths)


register_autograd(
    multi_scale_roi_align_rotated_op,
    _backward_through(multi_scale_roi_align_rotated_backward_op),
    _setup_context,
)
