"""Position-sensitive RoIAlign as custom ops: ``roiops::ps_roi_align`` and its backward.

No channel mapping is stored (torchvision returns one as large as the output): bin
(ph, pw) of output channel c reads input channel ``(c * PH + ph) * PW + pw``, a function
of the indices that every backend computes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops.cpu import layout
from roiops.cpu import ps_roi_align as cpu
from roiops.onnx import refuse_custom_op
from roiops.ops import (
    checked_backend,
    custom_op,
    forward_op,
    host_array,
    register_input_gradient,
)
from roiops.reference import ps_roi_align as reference

OP = "ps_roi_align"


@forward_op("roiops::ps_roi_align")
def ps_roi_align_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
) -> Tensor:
    """``Tensor[K, C // (pooled_height * pooled_width), pooled_height, pooled_width]``."""
    sizes = input.shape  # (once: each read builds a torch.Size, ~0.1 us of a CUDA call)
    backend = checked_backend(input.device, rois, sizes[0], OP, scale=spatial_scale, grid=(
        spatial_scale, pooled_height, pooled_width, sampling_ratio, True))  # fmt: skip
    channels_out = sizes[1] // (pooled_height * pooled_width)
    shape = (rois.shape[0], channels_out, pooled_height, pooled_width)
    if shape[0] == 0 or channels_out == 0 or sizes[2] == 0 or sizes[3] == 0:
        return input.new_zeros(shape)
    if backend == "triton":
        from roiops.gpu import roi_align as gpu

        _validate.check_plane_indexable(sizes, OP)
        out, _ = gpu.roi_align_forward(
            input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, True,
            False, position_sensitive=True,
        )  # fmt: skip
        return out
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        out = x.new_empty(shape)
        order, start, block = layout.bin_plane_tasks(
            rois, input.shape, pooled_height, pooled_width, x.dtype
        )
        cpu.ps_roi_align_forward(
            x.contiguous().numpy(), rois.numpy(), order, start, spatial_scale, pooled_height,
            pooled_width, sampling_ratio, block, out.numpy(),
        )  # fmt: skip
        return out.to(input.dtype)
    out = reference.ps_roi_align_forward(
        host_array(x), host_array(rois), spatial_scale, pooled_height, pooled_width,
        sampling_ratio,
    )  # fmt: skip
    return torch.from_numpy(out).to(input.device, input.dtype)


@ps_roi_align_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    refuse_custom_op("ps_roi_align")
    channels_out = input.shape[1] // (pooled_height * pooled_width)
    return input.new_empty((rois.shape[0], channels_out, pooled_height, pooled_width))


@custom_op("roiops::ps_roi_align_backward")
def ps_roi_align_backward_op(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::ps_roi_align`` w.r.t. its input (deterministic), contiguous
    NCHW on every device: a bin's gradient lands in one plane, near itself (the
    channels_last layout of roi_align's CPU gradient would put its four corners C
    values apart)."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0 or height == 0 or width == 0:
        return grad.new_zeros(shape)
    backend = checked_backend(grad.device, rois, batch_size, OP, scale=spatial_scale, grid=(
        spatial_scale, pooled_height, pooled_width, sampling_ratio, True))  # fmt: skip
    if backend == "triton":
        from roiops.gpu import roi_align as gpu

        grad_input = grad.new_empty(shape)
        return gpu.roi_align_backward(
            grad, rois, None, grad_input, spatial_scale, pooled_height, pooled_width,
            sampling_ratio, True, position_sensitive=True,
        )  # fmt: skip
    g = grad.to(_validate.compute_dtype(grad.dtype))
    if backend == "numba":
        grad_input = torch.empty(shape, dtype=g.dtype)  # zeroed by the kernel, in parallel
        order, start, block = layout.bin_plane_tasks(
            rois, shape, pooled_height, pooled_width, g.dtype
        )
        cpu.ps_roi_align_backward(
            g.contiguous().numpy(), rois.numpy(), order, start, spatial_scale,
            pooled_height, pooled_width, sampling_ratio, block, grad_input.numpy(),
        )  # fmt: skip
        return grad_input.to(grad.dtype)
    ref = reference.ps_roi_align_backward(
        host_array(g), host_array(rois), spatial_scale, pooled_height, pooled_width,
        sampling_ratio, shape,
    )  # fmt: skip
    return torch.from_numpy(ref).to(grad.device, grad.dtype)


@ps_roi_align_backward_op.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, batch_size,
      channels, height, width):  # fmt: skip
    return grad.new_empty((batch_size, channels, height, width))


register_input_gradient(ps_roi_align_op, ps_roi_align_backward_op)
