"""RoIAlign as custom ops: ``roiops::roi_align`` (avg), ``roiops::roi_align_max`` (the
article's max) and ``roiops::roi_align_onnx_max`` (ONNX RoiAlign's max).

Each op has its backward as a custom op too, a fake (meta) implementation for
torch.compile/export, and its autograd registration. The real implementations check
the boxes' values where that is free (``_validate.roi_values_checked``), then dispatch
to the backend chosen at call time.
"""

from __future__ import annotations

import numpy as np
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
from roiops.cpu import roi_align as cpu
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
from roiops.reference import roi_align as reference

OP = "roi_align"


def _output_is_empty(sizes: torch.Size, rois: Tensor) -> bool:
    """No RoI, no channel, or nothing to sample from in a map of ``sizes`` (N, C, H, W):
    all-zero output, no kernel launch."""
    return rois.shape[0] == 0 or sizes[1] == 0 or sizes[2] == 0 or sizes[3] == 0


# ---------------------------------------------------------------------------- forward
def _forward(
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, mode
):
    """``(output, argmax)``; argmax is None in avg mode. ``mode``: avg, max, onnx_max."""
    sizes = input.shape  # (once: each read builds a torch.Size, ~0.1 us of a CUDA call)
    backend = checked_backend(input.device, rois, sizes[0], OP, scale=spatial_scale, grid=(
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned))  # fmt: skip
    shape = (rois.shape[0], sizes[1], pooled_height, pooled_width)
    if _output_is_empty(sizes, rois):
        if mode == "avg":
            return input.new_zeros(shape), None
        argmax = new_argmax(input, shape, argmax_channel_major(input, backend))
        return input.new_zeros(shape), argmax.fill_(-1)
    if backend == "triton":
        from roiops.gpu import roi_align as gpu

        _validate.check_plane_indexable(sizes, OP)
        # half precision is read as is and accumulated in float32 by the kernels
        max_mode = gpu.ONNX_MAX_MODE if mode == "onnx_max" else mode == "max"
        return gpu.roi_align_forward(
            input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
            max_mode,
        )  # fmt: skip
    x = input.to(_validate.compute_dtype(input.dtype))
    if backend == "numba":
        # the kernels write every output element: no zero-filling pass
        out = x.new_empty(shape)
        argmax = torch.empty(argmax_shape(*shape), dtype=torch.int32) if mode != "avg" else None
        X = layout.channels_last_array(x)
        args = (
            X,
            rois.numpy(),
            spatial_scale,
            pooled_height,
            pooled_width,
            sampling_ratio,
            aligned,
        )
        if mode == "avg":
            cpu.roi_align_avg_forward(*args, out.numpy())
        else:
            onnx_max = mode == "onnx_max"
            cpu.roi_align_max_forward(*args, onnx_max, out.numpy(), argmax.numpy())
        return out.to(input.dtype), argmax
    out, argmax = reference.roi_align_forward(
        host_array(x), host_array(rois), spatial_scale, pooled_height, pooled_width,
        sampling_ratio, aligned, mode,
    )  # fmt: skip
    if argmax is not None:
        argmax = argmax_from_reference(argmax, input.device)
    return torch.from_numpy(out).to(input.device, input.dtype), argmax


@forward_op("roiops::roi_align")
def roi_align_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """Average-mode RoIAlign, ``Tensor[K, C, pooled_height, pooled_width]``."""
    out, _ = _forward(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, "avg"
    )
    return out


@forward_op("roiops::roi_align_max")
def roi_align_max_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor]:
    """Max-mode RoIAlign: ``(output, argmax)``; argmax is the winning sample per bin."""
    return _forward(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, "max"
    )


@forward_op("roiops::roi_align_onnx_max")
def roi_align_onnx_max_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor]:
    """ONNX RoiAlign's max: ``(output, argmax)``, argmax ``4 * sample + corner``."""
    return _forward(
        input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
        "onnx_max",
    )  # fmt: skip


@roi_align_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    refuse_custom_op("roi_align")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _fake_with_argmax(op: str):
    """The fake of an op returning ``(output, argmax)`` (max and ONNX max modes)."""

    def fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
        refuse_custom_op(op)
        shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
        channel_major = argmax_channel_major(input, would_serve(input.device))
        return input.new_empty(shape), new_argmax(input, shape, channel_major)

    return fake


roi_align_max_op.register_fake(_fake_with_argmax("roi_align_max"))
roi_align_onnx_max_op.register_fake(_fake_with_argmax("roi_align_onnx_max"))


# --------------------------------------------------------------------------- backward
@custom_op("roiops::roi_align_backward")
def roi_align_backward_op(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    argmax: Tensor | None = None,
    onnx_max: bool = False,
) -> Tensor:
    """Gradient w.r.t. the input (deterministic) of ``roiops::roi_align`` or, given the
    forward's ``argmax``, of ``roiops::roi_align_max`` (``roiops::roi_align_onnx_max``
    with ``onnx_max``)."""
    shape = (batch_size, channels, height, width)
    if grad.numel() == 0 or height == 0 or width == 0:
        return new_input_grad(shape, grad.dtype, grad.device)
    backend = checked_backend(grad.device, rois, batch_size, OP, scale=spatial_scale, grid=(
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned))  # fmt: skip
    mode = "avg" if argmax is None else "onnx_max" if onnx_max else "max"
    if backend == "triton":
        from roiops.gpu import roi_align as gpu

        grad_input = new_input_grad(shape, grad.dtype, grad.device, zeroed=False)
        return gpu.roi_align_backward(
            grad, rois, argmax, grad_input, spatial_scale, pooled_height, pooled_width,
            sampling_ratio, aligned, onnx_max=mode == "onnx_max",
        )  # fmt: skip
    g = grad.to(_validate.compute_dtype(grad.dtype))
    grad_input = new_input_grad(shape, g.dtype, g.device)
    if backend == "numba":
        order, start, block = layout.backward_tasks(rois, batch_size, channels)
        G = g.contiguous().numpy()
        GX = layout.grad_array(grad_input)
        params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
        if mode == "avg":
            cpu.roi_align_avg_backward(G, rois.numpy(), order, start, *params, block, GX)
        else:
            A = argmax.contiguous().numpy()
            cpu.roi_align_max_backward(
                G, A, rois.numpy(), order, start, *params, mode == "onnx_max", block, GX
            )
    else:
        ref = reference.roi_align_backward(
            host_array(g), host_array(rois), spatial_scale, pooled_height, pooled_width,
            sampling_ratio, aligned, shape, mode,
            None if argmax is None else argmax_to_reference(argmax),
        )  # fmt: skip
        grad_input.copy_(torch.from_numpy(ref))
    return grad_input.to(grad.dtype)


@roi_align_backward_op.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
      batch_size, channels, height, width, argmax=None, onnx_max=False):  # fmt: skip
    return fake_input_grad(grad, batch_size, channels, height, width)


@custom_op("roiops::roi_align_box_backward")
def roi_align_box_backward_op(
    grad: Tensor,
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
    argmax: Tensor | None = None,
) -> Tensor:
    """Gradient w.r.t. the rois, ``Tensor[K, 5]`` (column 0, the batch index, gets 0), of
    ``roiops::roi_align`` or, given its ``argmax``, ``roiops::roi_align_max``
    (``roiops.reference.roi_align.roi_align_box_backward``); deterministic."""
    if grad.numel() == 0 or _output_is_empty(input.shape, rois):
        return rois.new_zeros((rois.shape[0], 5))
    backend = checked_backend(grad.device, rois, input.shape[0], OP, scale=spatial_scale, grid=(
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned))  # fmt: skip
    params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    if backend == "triton":
        from roiops.gpu import roi_align as gpu

        return gpu.roi_align_box_backward(grad, input, rois, argmax, *params)
    dtype = _validate.compute_dtype(input.dtype)
    g, x = grad.to(dtype), input.to(dtype)
    if backend == "numba":
        out = rois.new_empty((rois.shape[0], 5))
        A = argmax.contiguous().numpy() if argmax is not None else np.zeros((0, 1, 1, 1), np.int32)
        cpu.roi_align_box_backward(
            g.contiguous().numpy(), layout.channels_last_array(x), rois.numpy(), *params,
            argmax is not None, A, out.numpy(),
        )  # fmt: skip
        return out
    ref = reference.roi_align_box_backward(
        host_array(g), host_array(x), host_array(rois), *params,
        "avg" if argmax is None else "max",
        None if argmax is None else argmax_to_reference(argmax),
    )  # fmt: skip
    return torch.from_numpy(ref).to(rois.device, rois.dtype)


@roi_align_box_backward_op.register_fake
def _(grad, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
      argmax=None):  # fmt: skip
    return rois.new_empty((rois.shape[0], 5))


# --------------------------------------------------------------------------- autograd
def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    argmax = output[1] if isinstance(output, tuple) else None
    # the box gradient reads the feature map: keep it only when the boxes want one
    ctx.save_for_backward(rois, argmax, input if rois.requires_grad else None)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad, _grad_argmax=None):
    rois, argmax, input = ctx.saved_tensors
    grad_input = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_input = call(roi_align_backward_op, grad, rois, *ctx.params, *ctx.input_shape,
                          argmax)  # fmt: skip
    if ctx.needs_input_grad[1]:
        grad_rois = call(roi_align_box_backward_op, grad, input, rois, *ctx.params, argmax)
    return grad_input, grad_rois, None, None, None, None, None


def _onnx_max_backward(ctx, grad, _grad_argmax=None):
    rois, argmax, _ = ctx.saved_tensors
    if ctx.needs_input_grad[1]:  # roiops.roi_align refuses this before the forward
        raise NotImplementedError("roi_align: mode='onnx_max' has no gradient w.r.t. the boxes")
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = call(roi_align_backward_op, grad, rois, *ctx.params, *ctx.input_shape,
                          argmax, True)  # fmt: skip
    return grad_input, None, None, None, None, None, None


register_autograd(roi_align_op, _backward, _setup_context)
register_autograd(roi_align_max_op, _backward, _setup_context)
register_autograd(roi_align_onnx_max_op, _onnx_max_backward, _setup_context)
