"""Point sampling in RoIs (PointRend) as custom ops: ``roiops::roi_point_sample`` and its
backward. ``points`` is ``Tensor[K, P, 2]``, each point ``(u, v)`` relative to its RoI
(``roiops.reference.roi_point_sample``), in the RoIs' dtype."""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops._layout import fake_input_grad, new_input_grad
from roiops.cpu import layout
from roiops.cpu import roi_point_sample as cpu
from roiops.onnx import refuse_custom_op
from roiops.ops import (
    call,
    checked_backend,
    custom_op,
    forward_op,
    host_array,
    register_autograd,
)
from roiops.reference import roi_point_sample as reference

OP = "roi_point_sample"


@forward_op("roiops::roi_point_sample")
def roi_point_sample_op(
    input: Tensor, rois: Tensor, points: Tensor, spatial_scale: float, aligned: bool
) -> Tensor:
    """``Tensor[K, C, P]``."""
    sizes = input.shape
    backend = checked_backend(input.device, rois, sizes[0], OP)
    shape = (rois.shape[0], sizes[1], points.shape[1])
    if rois.shape[0] == 0 or points.shape[1] == 0 or 0 in sizes[1:]:
        return input.new_zeros(shape)
    if backend == "triton":
        from roiops.gpu import roi_point_sample as gpu

        _validate.check_plane_indexable(sizes, OP)
        return gpu.roi_point_sample_forward(input, rois, points, spatial_scale, aligned)
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        X = layout.channels_last_array(x)
        cpu.roi_point_sample_forward(X, rois.numpy(), points.numpy(), spatial_scale, aligned,
                                     out.numpy())  # fmt: skip
        return out.to(input.dtype)
    out = reference.roi_point_sample_forward(host_array(x), host_array(rois), host_array(points),
                                             spatial_scale, aligned)  # fmt: skip
    return torch.from_numpy(out).to(input.device, input.dtype)


@roi_point_sample_op.register_fake
def _(input, rois, points, spatial_scale, aligned):
    refuse_custom_op(OP)
    return input.new_empty((rois.shape[0], input.shape[1], points.shape[1]))


@custom_op("roiops::roi_point_sample_backward")
def roi_point_sample_backward_op(
    grad: Tensor,
    rois: Tensor,
    points: Tensor,
    spatial_scale: float,
    aligned: bool,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::roi_point_sample`` w.r.t. its input (deterministic)."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0 or height == 0 or width == 0:
        return new_input_grad(shape, grad.dtype, grad.device)
    backend = checked_backend(grad.device, rois, batch_size, OP)
    if backend == "triton":
        from roiops.gpu import roi_point_sample as gpu

        grad_input = new_input_grad(shape, grad.dtype, grad.device, zeroed=False)
        return gpu.roi_point_sample_backward(grad, rois, points, grad_input, spatial_scale,
                                             aligned)  # fmt: skip
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grad_input = new_input_grad(shape, g.dtype, g.device)
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        cpu.roi_point_sample_backward(g.contiguous().numpy(), rois.numpy(), points.numpy(),
                                      order, start, spatial_scale, aligned, block,
                                      layout.grad_array(grad_input))  # fmt: skip
    else:
        ref = reference.roi_point_sample_backward(host_array(g), host_array(rois),
                                                  host_array(points), spatial_scale, aligned,
                                                  shape)  # fmt: skip
        grad_input.copy_(torch.from_numpy(ref))
    return grad_input.to(grad.dtype)


@roi_point_sample_backward_op.register_fake
def _(grad, rois, points, spatial_scale, aligned, batch_size, channels, height, width):
    return fake_input_grad(grad, batch_size, channels, height, width)


def _setup_context(ctx, inputs, output):
    input, rois, points, spatial_scale, aligned = inputs
    ctx.save_for_backward(rois, points)
    ctx.params = (spatial_scale, aligned)
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad):
    rois, points = ctx.saved_tensors
    grad_input = call(roi_point_sample_backward_op, grad, rois, points, *ctx.params,
                      *ctx.input_shape)  # fmt: skip
    return grad_input, None, None, None, None


# (the input's gradient only: the RoIs and the points get none, as in mmcv)
register_autograd(roi_point_sample_op, _backward, _setup_context)
