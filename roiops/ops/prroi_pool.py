"""Precise RoI Pooling as custom ops: ``roiops::prroi_pool``, its input gradient and its
box gradient. The input gradient is contiguous NCHW on every device (a bin's gradient
lands in one plane)."""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops.cpu import layout
from roiops.cpu import prroi_pool as cpu
from roiops.onnx import refuse_custom_op
from roiops.ops import call, checked_backend, custom_op, forward_op, host_array, register_autograd
from roiops.reference import prroi_pool as reference

OP = "prroi_pool"


@forward_op("roiops::prroi_pool")
def prroi_pool_op(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    """``Tensor[K, C, pooled_height, pooled_width]``."""
    backend = checked_backend(input.device, rois, input.shape[0], OP, scale=spatial_scale)
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    if rois.shape[0] == 0 or input.shape[1] == 0:
        return input.new_zeros(shape)
    if backend == "triton":
        from roiops.gpu import prroi_pool as gpu

        _validate.check_plane_indexable(input.shape, OP)
        return gpu.prroi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width)
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        cpu.prroi_pool_forward(
            x.contiguous().numpy(), rois.numpy(), spatial_scale, pooled_height, pooled_width,
            out.numpy(),
        )  # fmt: skip
        return out.to(input.dtype)
    out = reference.prroi_pool_forward(
        host_array(x), host_array(rois), spatial_scale, pooled_height, pooled_width
    )
    return torch.from_numpy(out).to(input.device, input.dtype)


@prroi_pool_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    refuse_custom_op("prroi_pool")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@custom_op("roiops::prroi_pool_backward")
def prroi_pool_backward_op(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient w.r.t. the input (deterministic, NCHW)."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0 or height == 0 or width == 0:
        return grad.new_zeros(shape)
    backend = checked_backend(grad.device, rois, batch_size, OP, scale=spatial_scale)
    if backend == "triton":
        from roiops.gpu import prroi_pool as gpu

        return gpu.prroi_pool_backward(grad, rois, grad.new_empty(shape), spatial_scale)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    if backend == "numba":
        grad_input = torch.empty(shape, dtype=g.dtype)  # zeroed by the kernel, in parallel
        order, start, block = layout.plane_backward_tasks(rois, batch_size, channels)
        cpu.prroi_pool_backward(
            g.contiguous().numpy(), rois.numpy(), order, start, spatial_scale,
            pooled_height, pooled_width, block, grad_input.numpy(),
        )  # fmt: skip
        return grad_input.to(grad.dtype)
    ref = reference.prroi_pool_backward(
        host_array(g), host_array(rois), spatial_scale, pooled_height, pooled_width, shape
    )
    return torch.from_numpy(ref).to(grad.device, grad.dtype)


@prroi_pool_backward_op.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
      width):  # fmt: skip
    return grad.new_empty((batch_size, channels, height, width))


@custom_op("roiops::prroi_pool_box_backward")
def prroi_pool_box_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    output: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
) -> Tensor:
    """Gradient w.r.t. the rois, ``Tensor[K, 5]`` (column 0 gets 0), deterministic."""
    if grad.numel() == 0:
        return rois.new_zeros((rois.shape[0], 5))
    backend = checked_backend(grad.device, rois, input.shape[0], OP, scale=spatial_scale)
    if backend == "triton":
        from roiops.gpu import prroi_pool as gpu

        return gpu.prroi_pool_box_backward(grad, input, rois, output, spatial_scale)
    dtype = _validate.compute_dtype(input.dtype)
    g, x, out = grad.to(dtype), input.to(dtype), output.to(dtype)
    if backend == "numba":
        grad_boxes = rois.new_empty((rois.shape[0], 5))
        cpu.prroi_pool_box_backward(
            g.contiguous().numpy(), x.contiguous().numpy(), rois.numpy(),
            out.contiguous().numpy(), spatial_scale, pooled_height, pooled_width,
            grad_boxes.numpy(),
        )  # fmt: skip
        return grad_boxes
    ref = reference.prroi_pool_box_backward(
        host_array(g), host_array(x), host_array(rois), host_array(out), spatial_scale,
        pooled_height, pooled_width,
    )  # fmt: skip
    return torch.from_numpy(ref).to(rois.device, rois.dtype)


@prroi_pool_box_backward_op.register_fake
def _(grad, input, rois, output, spatial_scale, pooled_height, pooled_width):
    return rois.new_empty((rois.shape[0], 5))


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    # the box gradient reads the features and the output: kept only when boxes want it
    boxes = rois.requires_grad
    ctx.save_for_backward(rois, input if boxes else None, output if boxes else None)
    ctx.params = (spatial_scale, pooled_height, pooled_width)
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad):
    rois, input, output = ctx.saved_tensors
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = call(prroi_pool_backward_op, grad, rois, *ctx.params, *ctx.input_shape)
    if ctx.needs_input_grad[1]:
        grad_rois = call(prroi_pool_box_backward_op, grad, input, rois, output, *ctx.params)
    return grad_input, grad_rois, None, None, None


register_autograd(prroi_pool_op, _backward, _setup_context)
