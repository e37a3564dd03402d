"""CropAndResize as custom ops: ``roiops::crop_and_resize``, its input gradient and its
box gradient.

``rois`` is ``Tensor[K, 5]`` of (image, y1, x1, y2, x2), normalized coordinates, in the
compute dtype (``roiops.reference.crop_and_resize``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops._layout import fake_input_grad, new_input_grad
from roiops.cpu import crop_and_resize as cpu
from roiops.cpu import layout
from roiops.onnx import refuse_custom_op
from roiops.ops import call, checked_backend, custom_op, forward_op, host_array, register_autograd
from roiops.reference import crop_and_resize as reference

OP = "crop_and_resize"
INDICES = "box_indices"  # (the batch indices' name in the op's errors)


@forward_op("roiops::crop_and_resize")
def crop_and_resize_op(
    input: Tensor,
    rois: Tensor,
    crop_height: int,
    crop_width: int,
    nearest: bool,
    extrapolation_value: float,
) -> Tensor:
    """``Tensor[K, C, crop_height, crop_width]``."""
    sizes = input.shape
    backend = checked_backend(input.device, rois, sizes[0], OP, indices=INDICES)
    shape = (rois.shape[0], sizes[1], crop_height, crop_width)
    if rois.shape[0] == 0 or sizes[1] == 0:
        return input.new_zeros(shape)
    args = (crop_height, crop_width, nearest, extrapolation_value)
    if backend == "triton":
        from roiops.gpu import crop_and_resize as gpu

        _validate.check_plane_indexable(sizes, OP)
        return gpu.crop_and_resize_forward(input, rois, *args)
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        cpu.crop_and_resize_forward(layout.channels_last_array(x), rois.numpy(), *args,
                                    out.numpy())  # fmt: skip
        return out.to(input.dtype)
    out = reference.crop_and_resize_forward(host_array(x), host_array(rois), *args)
    return torch.from_numpy(out).to(input.device, input.dtype)


@crop_and_resize_op.register_fake
def _(input, rois, crop_height, crop_width, nearest, extrapolation_value):
    refuse_custom_op(OP)
    return input.new_empty((rois.shape[0], input.shape[1], crop_height, crop_width))


@custom_op("roiops::crop_and_resize_backward")
def crop_and_resize_backward_op(
    grad: Tensor,
    rois: Tensor,
    nearest: bool,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::crop_and_resize`` w.r.t. its input (deterministic)."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0 or height == 0 or width == 0:
        return new_input_grad(shape, grad.dtype, grad.device)
    backend = checked_backend(grad.device, rois, batch_size, OP, indices=INDICES)
    if backend == "triton":
        from roiops.gpu import crop_and_resize as gpu

        grad_input = new_input_grad(shape, grad.dtype, grad.device, zeroed=False)
        return gpu.crop_and_resize_backward(grad, rois, nearest, grad_input)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grad_input = new_input_grad(shape, g.dtype, g.device)
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        cpu.crop_and_resize_backward(g.contiguous().numpy(), rois.numpy(), order, start,
                                     *grad.shape[2:], nearest, block,
                                     layout.grad_array(grad_input))  # fmt: skip
    else:
        ref = reference.crop_and_resize_backward(host_array(g), host_array(rois), nearest, shape)
        grad_input.copy_(torch.from_numpy(ref))
    return grad_input.to(grad.dtype)


@crop_and_resize_backward_op.register_fake
def _(grad, rois, nearest, batch_size, channels, height, width):
    return fake_input_grad(grad, batch_size, channels, height, width)


@custom_op("roiops::crop_and_resize_box_backward")
def crop_and_resize_box_backward_op(grad: Tensor, input: Tensor, rois: Tensor,
                                    nearest: bool) -> Tensor:  # fmt: skip
    """Gradient w.r.t. the boxes' rows, ``Tensor[K, 5]`` (0 for the image column;
    deterministic; 0 for ``nearest``)."""
    grad_rois = rois.new_zeros(rois.shape)
    sizes = input.shape
    if grad.numel() == 0 or nearest or sizes[2] == 0 or sizes[3] == 0:
        return grad_rois
    backend = checked_backend(grad.device, rois, sizes[0], OP, indices=INDICES)
    if backend == "triton":
        from roiops.gpu import crop_and_resize as gpu

        grad_rois[:, 1:] = gpu.crop_and_resize_box_backward(grad, input, rois)
        return grad_rois
    dtype = _validate.compute_dtype(input.dtype)
    g, x = grad.to(dtype), input.to(dtype)
    if backend == "numba":
        grad_boxes = rois.new_empty((rois.shape[0], 4))
        cpu.crop_and_resize_box_backward(g.contiguous().numpy(), layout.channels_last_array(x),
                                         rois.numpy(), *grad.shape[2:],
                                         grad_boxes.numpy())  # fmt: skip
    else:
        grad_boxes = torch.from_numpy(reference.crop_and_resize_box_backward(
            host_array(g), host_array(x), host_array(rois), nearest)).to(rois.device)  # fmt: skip
    grad_rois[:, 1:] = grad_boxes
    return grad_rois


@crop_and_resize_box_backward_op.register_fake
def _(grad, input, rois, nearest):
    return rois.new_empty(rois.shape)


def _setup_context(ctx, inputs, output):
    input, rois, _, _, nearest, _ = inputs
    # the box gradient reads the image: kept only when the boxes want it
    ctx.save_for_backward(rois, input if rois.requires_grad else None)
    ctx.nearest = nearest
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad):
    rois, input = ctx.saved_tensors
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = call(crop_and_resize_backward_op, grad, rois, ctx.nearest,
                          *ctx.input_shape)  # fmt: skip
    if ctx.needs_input_grad[1]:
        grad_rois = call(crop_and_resize_box_backward_op, grad, input, rois, ctx.nearest)
    return grad_input, grad_rois, None, None, None, None


register_autograd(crop_and_resize_op, _backward, _setup_context)
