"""Deformable position-sensitive RoI pooling as custom ops: ``roiops::deform_ps_roi_pool``,
its input gradient and its offset gradient.

``offset`` is ``Tensor[K, 2 * classes, part_size, part_size]`` in the RoIs' dtype, or
``[K, 0, part_size, part_size]`` for none (``roiops.reference.deform_ps_roi_pool``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops._layout import fake_input_grad, new_input_grad
from roiops.cpu import deform_ps_roi_pool as cpu
from roiops.cpu import layout
from roiops.onnx import refuse_custom_op
from roiops.ops import checked_backend, custom_op, forward_op, host_array
from roiops.ops.deform_roi_pool import host_offset_backward, register_offset_autograd
from roiops.reference import deform_ps_roi_pool as reference

OP = "deform_ps_roi_pool"


def _output_shape(input_shape, rois, pooled_height, pooled_width, group_size):
    channels_out = reference.output_channels(input_shape[1], group_size)
    return (rois.shape[0], channels_out, pooled_height, pooled_width)


def _empty(shape, sizes) -> bool:
    """Nothing to pool: no RoIs, no output channels, or a map without rows or columns."""
    return shape[0] == 0 or shape[1] == 0 or sizes[2] == 0 or sizes[3] == 0


@forward_op("roiops::deform_ps_roi_pool")
def deform_ps_roi_pool_op(
    input: Tensor,
    rois: Tensor,
    offset: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sample_per_part: int,
    group_size: int,
    part_size: int,
    trans_std: float,
) -> Tensor:
    """``Tensor[K, C / group_size**2, pooled_height, pooled_width]``."""
    sizes = input.shape
    backend = checked_backend(input.device, rois, sizes[0], OP, scale=spatial_scale)
    shape = _output_shape(sizes, rois, pooled_height, pooled_width, group_size)
    if _empty(shape, sizes):
        return input.new_zeros(shape)
    args = (spatial_scale, pooled_height, pooled_width, sample_per_part, group_size, part_size,
            trans_std)  # fmt: skip
    if backend == "triton":
        from roiops.gpu import deform_ps_roi_pool as gpu

        _validate.check_plane_indexable(sizes, OP)
        return gpu.deform_ps_roi_pool_forward(input, rois, offset, *args)
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        cpu.deform_ps_roi_pool_forward(
            layout.channels_last_array(x), rois.numpy(), offset.numpy(), *args, out.numpy()
        )
        return out.to(input.dtype)
    out = reference.deform_ps_roi_pool_forward(
        host_array(x), host_array(rois), host_array(offset), *args
    )
    return torch.from_numpy(out).to(input.device, input.dtype)


@deform_ps_roi_pool_op.register_fake
def _(input, rois, offset, spatial_scale, pooled_height, pooled_width, sample_per_part,
      group_size, part_size, trans_std):  # fmt: skip
    refuse_custom_op(OP)
    return input.new_empty(_output_shape(input.shape, rois, pooled_height, pooled_width,
                                         group_size))  # fmt: skip


@custom_op("roiops::deform_ps_roi_pool_backward")
def deform_ps_roi_pool_backward_op(
    grad: Tensor,
    rois: Tensor,
    offset: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sample_per_part: int,
    group_size: int,
    part_size: int,
    trans_std: float,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::deform_ps_roi_pool`` w.r.t. its input (deterministic)."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0 or height == 0 or width == 0:
        return new_input_grad(shape, grad.dtype, grad.device)
    backend = checked_backend(grad.device, rois, batch_size, OP, scale=spatial_scale)
    args = (spatial_scale, pooled_height, pooled_width, sample_per_part, group_size, part_size,
            trans_std)  # fmt: skip
    if backend == "triton":
        from roiops.gpu import deform_ps_roi_pool as gpu

        grad_input = new_input_grad(shape, grad.dtype, grad.device, zeroed=False)
        return gpu.deform_ps_roi_pool_backward(grad, rois, offset, grad_input, *args)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grad_input = new_input_grad(shape, g.dtype, g.device)
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, grad.shape[1])
        cpu.deform_ps_roi_pool_backward(
            g.contiguous().numpy(), rois.numpy(), offset.numpy(), order, start, *args, block,
            layout.grad_array(grad_input),
        )  # fmt: skip
    else:
        ref = reference.deform_ps_roi_pool_backward(
            host_array(g), host_array(rois), host_array(offset), *args, shape
        )
        grad_input.copy_(torch.from_numpy(ref))
    return grad_input.to(grad.dtype)


@deform_ps_roi_pool_backward_op.register_fake
def _(grad, rois, offset, spatial_scale, pooled_height, pooled_width, sample_per_part,
      group_size, part_size, trans_std, batch_size, channels, height, width):  # fmt: skip
    return fake_input_grad(grad, batch_size, channels, height, width)


@custom_op("roiops::deform_ps_roi_pool_offset_backward")
def deform_ps_roi_pool_offset_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    offset: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sample_per_part: int,
    group_size: int,
    part_size: int,
    trans_std: float,
) -> Tensor:
    """Gradient w.r.t. the offsets, ``offset``'s shape (deterministic)."""
    sizes = input.shape
    if grad.numel() == 0 or offset.numel() == 0 or sizes[2] == 0 or sizes[3] == 0:
        return offset.new_zeros(offset.shape)
    backend = checked_backend(grad.device, rois, sizes[0], OP, scale=spatial_scale)
    args = (spatial_scale, pooled_height, pooled_width, sample_per_part, group_size, part_size,
            trans_std)  # fmt: skip
    if backend == "triton":
        from roiops.gpu import deform_ps_roi_pool as gpu

        return gpu.deform_ps_roi_pool_offset_backward(grad, input, rois, offset, *args)
    return host_offset_backward(backend, cpu.deform_ps_roi_pool_offset_backward,
                                reference.deform_ps_roi_pool_offset_backward, grad, input,
                                rois, offset, args)  # fmt: skip


@deform_ps_roi_pool_offset_backward_op.register_fake
def _(grad, input, rois, offset, spatial_scale, pooled_height, pooled_width, sample_per_part,
      group_size, part_size, trans_std):  # fmt: skip
    return offset.new_empty(offset.shape)


register_offset_autograd(deform_ps_roi_pool_op, deform_ps_roi_pool_backward_op,
                         deform_ps_roi_pool_offset_backward_op)  # fmt: skip
