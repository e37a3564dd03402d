"""SimpleRoIAlign (PointRend) as custom ops: ``roiops::simple_roi_align`` and its backward."""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops._layout import fake_input_grad, new_input_grad
from roiops.cpu import layout
from roiops.cpu import simple_roi_align as cpu
from roiops.onnx import refuse_custom_op
from roiops.ops import (
    checked_backend,
    custom_op,
    forward_op,
    host_array,
    register_input_gradient,
)
from roiops.reference import simple_roi_align as reference

OP = "simple_roi_align"


@forward_op("roiops::simple_roi_align")
def simple_roi_align_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    aligned: bool,
) -> Tensor:
    """``Tensor[K, C, pooled_height, pooled_width]``."""
    sizes = input.shape
    args = (spatial_scale, pooled_height, pooled_width, aligned)
    backend = checked_backend(input.device, rois, sizes[0], OP)
    shape = (rois.shape[0], sizes[1], pooled_height, pooled_width)
    if rois.shape[0] == 0 or sizes[1] == 0 or sizes[2] == 0 or sizes[3] == 0:
        return input.new_zeros(shape)
    if backend == "triton":
        from roiops.gpu import simple_roi_align as gpu

        _validate.check_plane_indexable(sizes, OP)
        return gpu.simple_roi_align_forward(input, rois, *args)
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        cpu.simple_roi_align_forward(layout.channels_last_array(x), rois.numpy(), *args,
                                     out.numpy())  # fmt: skip
        return out.to(input.dtype)
    out = reference.simple_roi_align_forward(host_array(x), host_array(rois), *args)
    return torch.from_numpy(out).to(input.device, input.dtype)


@simple_roi_align_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, aligned):
    refuse_custom_op(OP)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@custom_op("roiops::simple_roi_align_backward")
def simple_roi_align_backward_op(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    aligned: bool,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::simple_roi_align`` w.r.t. its input (deterministic)."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0 or height == 0 or width == 0:
        return new_input_grad(shape, grad.dtype, grad.device)
    args = (spatial_scale, pooled_height, pooled_width, aligned)
    backend = checked_backend(grad.device, rois, batch_size, OP)
    if backend == "triton":
        from roiops.gpu import simple_roi_align as gpu

        grad_input = new_input_grad(shape, grad.dtype, grad.device, zeroed=False)
        return gpu.simple_roi_align_backward(grad, rois, grad_input, *args)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grad_input = new_input_grad(shape, g.dtype, g.device)
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        cpu.simple_roi_align_backward(g.contiguous().numpy(), rois.numpy(), order, start, *args,
                                      block, layout.grad_array(grad_input))  # fmt: skip
    else:
        ref = reference.simple_roi_align_backward(host_array(g), host_array(rois), *args, shape)
        grad_input.copy_(torch.from_numpy(ref))
    return grad_input.to(grad.dtype)


@simple_roi_align_backward_op.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, aligned, batch_size, channels,
      height, width):  # fmt: skip
    return fake_input_grad(grad, batch_size, channels, height, width)


register_input_gradient(simple_roi_align_op, simple_roi_align_backward_op)
