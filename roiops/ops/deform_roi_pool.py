"""Deformable RoI pooling as custom ops: ``roiops::deform_roi_pool``, its input gradient
and its offset gradient.

``offset`` is ``Tensor[K, 2, PH, PW]`` in the RoIs' dtype: each bin's (x, y) shift in
units of ``gamma`` times the RoI's width and height (``roiops.reference.deform_roi_pool``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops._layout import fake_input_grad, new_input_grad
from roiops.cpu import deform_roi_pool as cpu
from roiops.cpu import layout
from roiops.onnx import refuse_custom_op
from roiops.ops import call, checked_backend, custom_op, forward_op, host_array, register_autograd
from roiops.reference import deform_roi_pool as reference

OP = "deform_roi_pool"


def _checked_backend(device, rois, batch_size, spatial_scale, pooled_height, pooled_width,
                     sampling_ratio):  # fmt: skip
    """``checked_backend`` with the aligned RoIAlign grid's check (no absurd adaptive
    grid); the offsets may take any value (a bin with a non-finite one gives NaN)."""
    grid = (spatial_scale, pooled_height, pooled_width, sampling_ratio, True)
    return checked_backend(device, rois, batch_size, OP, scale=spatial_scale, grid=grid)


@forward_op("roiops::deform_roi_pool")
def deform_roi_pool_op(
    input: Tensor,
    rois: Tensor,
    offset: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    gamma: float,
) -> Tensor:
    """``Tensor[K, C, pooled_height, pooled_width]``."""
    sizes = input.shape
    backend = _checked_backend(input.device, rois, sizes[0], spatial_scale, pooled_height,
                               pooled_width, sampling_ratio)  # fmt: skip
    shape = (rois.shape[0], sizes[1], pooled_height, pooled_width)
    if rois.shape[0] == 0 or sizes[1] == 0 or sizes[2] == 0 or sizes[3] == 0:
        return input.new_zeros(shape)
    args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma)
    if backend == "triton":
        from roiops.gpu import deform_roi_pool as gpu

        _validate.check_plane_indexable(sizes, OP)
        return gpu.deform_roi_pool_forward(input, rois, offset, *args)
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        cpu.deform_roi_pool_forward(
            layout.channels_last_array(x), rois.numpy(), offset.numpy(), *args, out.numpy()
        )
        return out.to(input.dtype)
    out = reference.deform_roi_pool_forward(
        host_array(x), host_array(rois), host_array(offset), *args
    )
    return torch.from_numpy(out).to(input.device, input.dtype)


@deform_roi_pool_op.register_fake
def _(input, rois, offset, spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma):
    refuse_custom_op(OP)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@custom_op("roiops::deform_roi_pool_backward")
def deform_roi_pool_backward_op(
    grad: Tensor,
    rois: Tensor,
    offset: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    gamma: float,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::deform_roi_pool`` w.r.t. its input (deterministic)."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0 or height == 0 or width == 0:
        return new_input_grad(shape, grad.dtype, grad.device)
    backend = _checked_backend(grad.device, rois, batch_size, spatial_scale, pooled_height,
                               pooled_width, sampling_ratio)  # fmt: skip
    args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma)
    if backend == "triton":
        from roiops.gpu import deform_roi_pool as gpu

        grad_input = new_input_grad(shape, grad.dtype, grad.device, zeroed=False)
        return gpu.deform_roi_pool_backward(grad, rois, offset, grad_input, *args)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grad_input = new_input_grad(shape, g.dtype, g.device)
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        cpu.deform_roi_pool_backward(
            g.contiguous().numpy(), rois.numpy(), offset.numpy(), order, start, *args, block,
            layout.grad_array(grad_input),
        )  # fmt: skip
    else:
        ref = reference.deform_roi_pool_backward(
            host_array(g), host_array(rois), host_array(offset), *args, shape
        )
        grad_input.copy_(torch.from_numpy(ref))
    return grad_input.to(grad.dtype)


@deform_roi_pool_backward_op.register_fake
def _(grad, rois, offset, spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma,
      batch_size, channels, height, width):  # fmt: skip
    return fake_input_grad(grad, batch_size, channels, height, width)


@custom_op("roiops::deform_roi_pool_offset_backward")
def deform_roi_pool_offset_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    gamma: float,
) -> Tensor:
    """Gradient w.r.t. the offsets, ``Tensor[K, 2, PH, PW]`` (deterministic)."""
    sizes = input.shape
    if grad.numel() == 0 or sizes[2] == 0 or sizes[3] == 0:
        return offset.new_zeros(offset.shape)
    backend = _checked_backend(grad.device, rois, sizes[0], spatial_scale, pooled_height,
                               pooled_width, sampling_ratio)  # fmt: skip
    args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, gamma)
    if backend == "triton":
        from roiops.gpu import deform_roi_pool as gpu

        return gpu.deform_roi_pool_offset_backward(grad, input, rois, offset, *args)
    return host_offset_backward(backend, cpu.deform_roi_pool_offset_backward,
                                reference.deform_roi_pool_offset_backward, grad, input, rois,
                                offset, args)  # fmt: skip


def host_offset_backward(backend: str, numba_kernel, reference_kernel, grad: Tensor,
                         input: Tensor, rois: Tensor, offset: Tensor,
                         args: tuple) -> Tensor:  # fmt: skip
    """A deformable pooling's offset gradient on the host (``backend`` ``"numba"`` or
    ``"reference"``): the kernel's ``(grad, map channels-last, rois, offset, *args,
    out)`` or the reference's ``(grad, map, rois, offset, *args)``, in the map's compute
    dtype."""
    dtype = _validate.compute_dtype(input.dtype)
    g, x = grad.to(dtype), input.to(dtype)
    if backend == "numba":
        grad_offset = offset.new_empty(offset.shape)
        numba_kernel(g.contiguous().numpy(), layout.channels_last_array(x), rois.numpy(),
                     offset.numpy(), *args, grad_offset.numpy())  # fmt: skip
        return grad_offset
    ref = reference_kernel(host_array(g), host_array(x), host_array(rois), host_array(offset),
                           *args)  # fmt: skip
    return torch.from_numpy(ref).to(offset.device, offset.dtype)


@deform_roi_pool_offset_backward_op.register_fake
def _(grad, input, rois, offset, spatial_scale, pooled_height, pooled_width, sampling_ratio,
      gamma):  # fmt: skip
    return offset.new_empty(offset.shape)


def register_offset_autograd(forward: object, input_backward: object,
                             offset_backward: object) -> None:  # fmt: skip
    """Autograd of a deformable pooling op ``forward(input, rois, offset, *params)``:
    ``input_backward(grad, rois, offset, *params, *input shape)`` and
    ``offset_backward(grad, input, rois, offset, *params)``; the boxes get none."""

    def setup_context(ctx, inputs, output):
        input, rois, offset, *params = inputs
        # the offset gradient reads the features: kept only when the offsets want it
        ctx.save_for_backward(rois, offset, input if offset.requires_grad else None)
        ctx.params = params
        ctx.input_shape = tuple(input.shape)

    def backward(ctx, grad):
        rois, offset, input = ctx.saved_tensors
        grad_input = grad_offset = None
        if ctx.needs_input_grad[0]:
            grad_input = call(input_backward, grad, rois, offset, *ctx.params,
                              *ctx.input_shape)  # fmt: skip
        if ctx.needs_input_grad[2]:
            grad_offset = call(offset_backward, grad, input, rois, offset, *ctx.params)
        return grad_input, None, grad_offset, *([None] * len(ctx.params))

    register_autograd(forward, backward, setup_context)


register_offset_autograd(deform_roi_pool_op, deform_roi_pool_backward_op,
                         deform_roi_pool_offset_backward_op)  # fmt: skip
