"""RoIPool as custom ops: ``roiops::roi_pool``, ``roiops::roi_pool_backward`` and
``roiops::roi_pool_inference`` (the output alone, no argmax, for calls without autograd)."""

from __future__ import annotations

import torch
from torch import Tensor

from roiops import _validate
from roiops._backend import would_serve
from roiops._layout import (
    argmax_channel_major,
    argmax_shape,
    fake_input_grad,
    new_argmax,
    new_input_grad,
)
from roiops.cpu import layout
from roiops.cpu import roi_pool as cpu
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
from roiops.reference import roi_pool as reference

OP = "roi_pool"


def _forward(input, rois, spatial_scale, pooled_height, pooled_width, with_argmax):
    """``(output, argmax or None)`` on the selected backend."""
    sizes = input.shape  # (once: each read builds a torch.Size, ~0.1 us of a CUDA call)
    backend = checked_backend(input.device, rois, sizes[0], OP, scale=spatial_scale)
    _validate.check_plane_indexable(sizes, OP)
    shape = (rois.shape[0], sizes[1], pooled_height, pooled_width)
    if shape[0] == 0 or shape[1] == 0:
        argmax = new_argmax(input, shape, argmax_channel_major(input, backend)).fill_(-1)
        return input.new_zeros(shape), (argmax if with_argmax else None)
    if backend == "triton":
        from roiops.gpu import roi_pool as gpu

        return gpu.roi_pool_forward(
            input, rois, spatial_scale, pooled_height, pooled_width, with_argmax
        )
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        # the kernel writes every output element: no zero-filling pass; an argmax with
        # no rows tells it not to store the winners
        out = x.new_empty(shape)
        arg_shape = argmax_shape(*shape)
        argmax = torch.empty(arg_shape if with_argmax else (0, *arg_shape[1:]), dtype=torch.int32)
        X = layout.channels_last_array(x)
        cpu.roi_pool_forward(
            X, rois.numpy(), spatial_scale, pooled_height, pooled_width, out.numpy(), argmax.numpy()
        )
        return out.to(input.dtype), (argmax if with_argmax else None)
    out, argmax = reference.roi_pool_forward(
        host_array(x), host_array(rois), spatial_scale, pooled_height, pooled_width
    )
    out = torch.from_numpy(out).to(input.device, input.dtype)
    return out, (argmax_from_reference(argmax, input.device) if with_argmax else None)


@forward_op("roiops::roi_pool")
def roi_pool_op(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> tuple[Tensor, Tensor]:
    """RoIPool: ``(output, argmax)``; ``argmax[K, ph, pw, C]`` = winning ``h * W + w`` or -1."""
    return _forward(input, rois, spatial_scale, pooled_height, pooled_width, with_argmax=True)


@roi_pool_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    refuse_custom_op("roi_pool")
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    channel_major = argmax_channel_major(input, would_serve(input.device))
    return input.new_empty(shape), new_argmax(input, shape, channel_major)


@forward_op("roiops::roi_pool_inference")
def roi_pool_inference_op(
    input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int, pooled_width: int
) -> Tensor:
    """RoIPool's output alone, for calls that need no gradient: the argmax (as large as
    the output) is neither stored nor returned. No autograd."""
    out, _ = _forward(input, rois, spatial_scale, pooled_height, pooled_width, with_argmax=False)
    return out


@roi_pool_inference_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width):
    refuse_custom_op("roi_pool_inference")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@custom_op("roiops::roi_pool_backward")
def roi_pool_backward_op(
    grad: Tensor,
    argmax: Tensor,
    rois: Tensor,
    spatial_scale: float,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::roi_pool`` w.r.t. its input: argmax routing, deterministic."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0:
        return new_input_grad(shape, grad.dtype, grad.device)
    backend = checked_backend(grad.device, rois, batch_size, OP, scale=spatial_scale)
    if backend == "triton":
        from roiops.gpu import roi_pool as gpu

        grad_input = new_input_grad(shape, grad.dtype, grad.device, zeroed=False)
        return gpu.roi_pool_backward(grad, rois, argmax, grad_input, spatial_scale)
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grad_input = new_input_grad(shape, g.dtype, g.device)
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        GX = layout.grad_array(grad_input)
        cpu.roi_pool_backward(
            g.contiguous().numpy(), argmax.contiguous().numpy(), order, start, block, GX
        )
    else:
        ref = reference.roi_pool_backward(
            host_array(g), host_array(rois), argmax_to_reference(argmax), shape
        )
        grad_input.copy_(torch.from_numpy(ref))
    return grad_input.to(grad.dtype)


@roi_pool_backward_op.register_fake
def _(grad, argmax, rois, spatial_scale, batch_size, channels, height, width):
    return fake_input_grad(grad, batch_size, channels, height, width)


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, _, _ = inputs
    ctx.save_for_backward(rois, output[1])
    ctx.spatial_scale = spatial_scale
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad, _grad_argmax):
    rois, argmax = ctx.saved_tensors
    grad_input = call(roi_pool_backward_op, grad, argmax, rois, ctx.spatial_scale,
                      *ctx.input_shape)  # fmt: skip
    return grad_input, None, None, None, None


register_autograd(roi_pool_op, _backward, _setup_context)
