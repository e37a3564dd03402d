"""Position-sensitive RoIPool as custom ops: ``roiops::ps_roi_pool`` and its backward.

As ``roiops.ops.ps_roi_align``: no channel mapping is stored, and the input gradient is
contiguous NCHW on every device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops.cpu import layout
from roiops.cpu import ps_roi_pool as cpu
from roiops.onnx import refuse_custom_op
from roiops.ops import (
    checked_backend,
    custom_op,
    forward_op,
    host_array,
    register_input_gradient,
)
from roiops.reference import ps_roi_pool as reference

OP = "ps_roi_pool"


@forward_op("roiops::ps_roi_pool")
def ps_roi_pool_op(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    """``Tensor[K, C // (pooled_height * pooled_width), pooled_height, pooled_width]``."""
    sizes = input.shape  # (once: each read builds a torch.Size, ~0.1 us of a CUDA call)
    backend = checked_backend(input.device, rois, sizes[0], OP, scale=spatial_scale)
    channels_out = sizes[1] // (pooled_height * pooled_width)
    shape = (rois.shape[0], channels_out, pooled_height, pooled_width)
    if shape[0] == 0 or channels_out == 0 or sizes[2] == 0 or sizes[3] == 0:
        return input.new_zeros(shape)
    if backend == "triton":
        from roiops.gpu import ps_roi_pool as gpu

        _validate.check_plane_indexable(sizes, OP)
        return gpu.ps_roi_pool_forward(input, rois, spatial_scale, pooled_height, pooled_width)
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        order, start, block = layout.bin_plane_tasks(
            rois, input.shape, pooled_height, pooled_width, x.dtype
        )
        cpu.ps_roi_pool_forward(
            x.contiguous().numpy(), rois.numpy(), order, start, spatial_scale,
            pooled_height, pooled_width, block, out.numpy(),
        )  # fmt: skip
        return out.to(input.dtype)
    out = reference.ps_roi_pool_forward(
        host_array(x), host_array(rois), spatial_scale, pooled_height, pooled_width
    )
    return torch.from_numpy(out).to(input.device, input.dtype)


@ps_roi_pool_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    refuse_custom_op("ps_roi_pool")
    channels_out = input.shape[1] // (pooled_height * pooled_width)
    return input.new_empty((rois.shape[0], channels_out, pooled_height, pooled_width))


@custom_op("roiops::ps_roi_pool_backward")
def ps_roi_pool_backward_op(
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
    """Gradient of ``roiops::ps_roi_pool`` w.r.t. its input (deterministic, NCHW): the
    exact derivative of the forward, ``grad / area`` to each cell of a bin."""
    shape = (batch_size, channels, height, width)
    _validate.check_position_sensitive_channels(channels, (pooled_height, pooled_width), OP)
    if grad.numel() == 0 or height == 0 or width == 0:
        return grad.new_zeros(shape)
    backend = checked_backend(grad.device, rois, batch_size, OP, scale=spatial_scale)
    if backend == "triton":
        from roiops.gpu import ps_roi_pool as gpu

        return gpu.ps_roi_pool_backward(grad, rois, grad.new_empty(shape), spatial_scale)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    if backend == "numba":
        grad_input = torch.empty(shape, dtype=g.dtype)  # zeroed by the kernel, in parallel
        order, start, block = layout.bin_plane_tasks(
            rois, shape, pooled_height, pooled_width, g.dtype
        )
        cpu.ps_roi_pool_backward(
            g.contiguous().numpy(), rois.numpy(), order, start, spatial_scale,
            pooled_height, pooled_width, block, grad_input.numpy(),
        )  # fmt: skip
        return grad_input.to(grad.dtype)
    ref = reference.ps_roi_pool_backward(
        host_array(g), host_array(rois), spatial_scale, pooled_height, pooled_width, shape
    )
    return torch.from_numpy(ref).to(grad.device, grad.dtype)


@ps_roi_pool_backward_op.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
      width):  # fmt: skip
    return grad.new_empty((batch_size, channels, height, width))


register_input_gradient(ps_roi_pool_op, ps_roi_pool_backward_op)
