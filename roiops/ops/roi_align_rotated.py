"""Rotated RoIAlign as custom ops: ``roiops::roi_align_rotated`` and its backward.

``rois`` is ``Tensor[K, 6]``: ``(batch_index, cx, cy, w, h, angle)``; ``degrees`` and
``clockwise`` say how the angle is read (detectron2: degrees, counter-clockwise; mmcv:
radians, either), ``aligned`` whether the half-pixel offset applies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops._layout import fake_input_grad, new_input_grad
from roiops.cpu import layout
from roiops.cpu import roi_align_rotated as cpu
from roiops.onnx import refuse_custom_op
from roiops.ops import (
    checked_backend,
    custom_op,
    forward_op,
    host_array,
    register_input_gradient,
)
from roiops.reference import roi_align_rotated as reference

OP = "roi_align_rotated"


def checked_rotated_backend(device, rois, batch_size, spatial_scale, pooled_height,
                            pooled_width, sampling_ratio, aligned, op):  # fmt: skip
    """``checked_backend``; aligned boxes must not have negative sizes (detectron2
    refuses them; mmcv's legacy mode makes them 1x1), and no adaptive grid be absurd."""
    sizes = [lambda: _validate.check_rotated_sizes(rois, op)] if aligned else []
    grid = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, True)
    return checked_backend(device, rois, batch_size, op, *sizes, grid=grid)


def angle_unit_name(degrees: bool) -> str:
    """The reference's ``angle_unit`` for the ops' ``degrees`` flag."""
    return "degrees" if degrees else "radians"


@forward_op("roiops::roi_align_rotated")
def roi_align_rotated_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    degrees: bool,
    clockwise: bool,
) -> Tensor:
    """``Tensor[K, C, pooled_height, pooled_width]``."""
    return rotated_forward(input, rois, spatial_scale, pooled_height, pooled_width,
                           sampling_ratio, aligned, degrees, clockwise, OP)  # fmt: skip


def rotated_forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                    aligned, degrees, clockwise, op, out_dtype=None):  # fmt: skip
    """The forward op's output, on the backend that serves ``input``, in ``out_dtype``
    (the input's by default: a half map's result rounded once to it); errors name ``op``
    (an op built on this one names itself)."""
    out_dtype = input.dtype if out_dtype is None else out_dtype
    backend = checked_rotated_backend(input.device, rois, input.shape[0], spatial_scale,
                                      pooled_height, pooled_width, sampling_ratio, aligned,
                                      op)  # fmt: skip
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    if rois.shape[0] == 0 or input.shape[1] == 0 or input.shape[2] == 0 or input.shape[3] == 0:
        return input.new_zeros(shape, dtype=out_dtype)
    args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    if backend == "triton":
        from roiops.gpu import roi_align_rotated as gpu

        _validate.check_plane_indexable(input.shape, op)
        return gpu.roi_align_rotated_forward(input, rois, *args, degrees, clockwise, out_dtype)
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        cpu.roi_align_rotated_forward(
            layout.channels_last_array(x), rois.numpy(), *args, degrees, clockwise, out.numpy()
        )
        return out.to(out_dtype)
    out = reference.roi_align_rotated_forward(
        host_array(x), host_array(rois), *args, angle_unit_name(degrees), clockwise
    )
    return torch.from_numpy(out).to(input.device, out_dtype)


@roi_align_rotated_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, degrees,
      clockwise):  # fmt: skip
    refuse_custom_op("roi_align_rotated")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@custom_op("roiops::roi_align_rotated_backward")
def roi_align_rotated_backward_op(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    degrees: bool,
    clockwise: bool,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::roi_align_rotated`` w.r.t. its input (deterministic)."""
    return rotated_input_grad(grad, rois, spatial_scale, pooled_height, pooled_width,
                              sampling_ratio, aligned, degrees, clockwise,
                              (batch_size, channels, height, width), OP)  # fmt: skip


def rotated_input_grad(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                       aligned, degrees, clockwise, shape, op):  # fmt: skip
    """The backward op's input gradient of ``shape`` ``(N, C, H, W)``; errors name
    ``op``."""
    batch_size, channels, height, width = shape
    if grad.numel() == 0 or height == 0 or width == 0:
        return new_input_grad(shape, grad.dtype, grad.device)
    backend = checked_rotated_backend(grad.device, rois, batch_size, spatial_scale,
                                      pooled_height, pooled_width, sampling_ratio, aligned,
                                      op)  # fmt: skip
    args = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    if backend == "triton":
        from roiops.gpu import roi_align_rotated as gpu

        grad_input = new_input_grad(shape, grad.dtype, grad.device, zeroed=False)
        return gpu.roi_align_rotated_backward(grad, rois, grad_input, *args, degrees, clockwise)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grad_input = new_input_grad(shape, g.dtype, g.device)
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        cpu.roi_align_rotated_backward(
            g.contiguous().numpy(), rois.numpy(), order, start, *args, degrees, clockwise,
            block, layout.grad_array(grad_input),
        )  # fmt: skip
    else:
        ref = reference.roi_align_rotated_backward(
            host_array(g), host_array(rois), spatial_scale, pooled_height, pooled_width,
            sampling_ratio, shape, aligned, angle_unit_name(degrees), clockwise,
        )  # fmt: skip
        grad_input.copy_(torch.from_numpy(ref))
    return grad_input.to(grad.dtype)


@roi_align_rotated_backward_op.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, degrees,
      clockwise, batch_size, channels, height, width):  # fmt: skip
    return fake_input_grad(grad, batch_size, channels, height, width)


register_input_gradient(roi_align_rotated_op, roi_align_rotated_backward_op)
