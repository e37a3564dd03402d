"""Rotation-invariant RoIAlign (ReDet's RiRoIAlignRotated) as custom ops:
``roiops::riroi_align_rotated`` and its backward, and its orientation step alone,
``roiops::turn_orientations`` and its backward (for pooling over a feature pyramid).

The op is linear in the features, so it is computed in two steps (on CPU, the second
fused into the first's writes): rotated RoIAlign of every channel in mmcv's legacy
convention (``roiops.ops.roi_align_rotated``'s kernels: radians, ``aligned=False``), then
each RoI's orientation channels turned by its angle,
``out[k, c, o] = (1 - f) * pooled[k, c, o - s] + f * pooled[k, c, o - s + 1]`` (mod O,
``s + f = theta * O / (2 pi)``, :func:`orientation_shift`). That is
``roiops.reference.riroi_align_rotated``'s per-point formula (mmcv's) up to float
rounding: the two weights multiply each bin's mean instead of each point. The step's
backward is the step with the shift reversed; both are gathers, so the gradient is as
deterministic as rotated RoIAlign's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from roiops import _validate
from roiops._backend import select_backend
from roiops._layout import fake_input_grad, new_input_grad
from roiops.cpu import layout
from roiops.cpu import orientations as cpu
from roiops.onnx import refuse_custom_op
from roiops.ops import (
    call,
    custom_op,
    forward_op,
    host_array,
    register_autograd,
    register_input_gradient,
)
from roiops.ops.roi_align_rotated import (
    checked_rotated_backend,
    rotated_forward,
    rotated_input_grad,
)
from roiops.reference import riroi_align_rotated as reference

OP = "riroi_align_rotated"


def orientation_shift(angles: Tensor, num_orientations: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(s, 1 - f, f)`` of each RoI's angle (radians, ``Tensor[K]``): ``s`` int64 in
    ``[0, O)`` and the weights in the angles' dtype, in mmcv's arithmetic (``theta * O``
    in that dtype, divided by ``2 pi`` in float64 and rounded to it). Any angle gives a
    shift in range (a non-finite one NaN weights)."""
    position = ((angles * num_orientations).double() / (2 * math.pi)).to(angles.dtype)
    whole = torch.floor(position)
    fraction = position - whole
    # (whole numbers past int64's range, and NaN, still give an index in range)
    shift = whole.clamp(-(2.0**62), 2.0**62).nan_to_num(0.0).to(torch.int64)
    return shift.remainder(num_orientations), 1 - fraction, fraction


def _turn(x: Tensor, angles: Tensor, num_orientations: int, direction: int) -> Tensor:
    """``out[k, c, o] = (1 - f) * x[k, c, i] + f * x[k, c, (i + D) % O]`` with ``i = (o -
    D * s) % O`` over ``x[K, C * O, PH, PW]`` (``s``, ``f``: :func:`orientation_shift` of
    ``angles``; ``D``: ``direction``), in (and of) the compute dtype."""
    k, channels, height, width = x.shape
    dtype = _validate.compute_dtype(x.dtype)
    groups = (k, channels // num_orientations, num_orientations, height * width)
    grouped = x.to(dtype).reshape(groups)
    backend = select_backend(x.device)
    if backend == "triton":
        from roiops.gpu import orientations as gpu

        out = gpu.turn_orientations(grouped.contiguous(), angles, grouped.new_empty(groups),
                                    direction)  # fmt: skip
        return out.view(k, channels, height, width)
    shift, right, left = orientation_shift(angles, num_orientations)
    right, left, shift = right.to(dtype), left.to(dtype), shift * direction
    if backend == "numba":
        out = grouped.new_empty(groups)
        cpu.turn_orientations(grouped.contiguous().numpy(), shift.numpy(), right.numpy(),
                              left.numpy(), direction, out.numpy())  # fmt: skip
        return out.view(k, channels, height, width)
    orientations = torch.arange(num_orientations, device=x.device)
    read = (orientations - shift[:, None]) % num_orientations

    def term(weight: Tensor, index: Tensor) -> Tensor:
        taken = grouped.gather(2, index.view(k, 1, num_orientations, 1).expand(groups))
        return weight.view(k, 1, 1, 1) * taken

    out = term(right, read) + term(left, (read + direction) % num_orientations)
    return out.view(k, channels, height, width)


def turn(pooled: Tensor, angles: Tensor, num_orientations: int) -> Tensor:
    """The orientation step: each RoI's channels of ``pooled`` turned by its angle (in
    the compute dtype: float32 for a half ``pooled``)."""
    return _turn(pooled, angles, num_orientations, 1)


def turn_backward(grad: Tensor, angles: Tensor, num_orientations: int) -> Tensor:
    """The step's gradient w.r.t. ``pooled``: ``g[j] = (1 - f) * grad[j + s] + f *
    grad[j + s - 1]`` (mod O), the step with the shift reversed (in the compute
    dtype)."""
    return _turn(grad, angles, num_orientations, -1)


@forward_op("roiops::turn_orientations")
def turn_orientations_op(pooled: Tensor, angles: Tensor, num_orientations: int) -> Tensor:
    """``Tensor[K, C * O, PH, PW]``: :func:`turn`."""
    _validate.check_orientations(num_orientations, pooled.shape[1], "turn_orientations")
    return turn(pooled, angles, num_orientations).to(pooled.dtype)


@turn_orientations_op.register_fake
def _(pooled, angles, num_orientations):
    refuse_custom_op(OP)
    return pooled.new_empty(pooled.shape)


@custom_op("roiops::turn_orientations_backward")
def turn_orientations_backward_op(grad: Tensor, angles: Tensor, num_orientations: int) -> Tensor:
    """Gradient of ``roiops::turn_orientations`` w.r.t. ``pooled``."""
    return turn_backward(grad, angles, num_orientations).to(grad.dtype)


@turn_orientations_backward_op.register_fake
def _(grad, angles, num_orientations):
    return grad.new_empty(grad.shape)


def _setup_turn(ctx, inputs, output):
    _, angles, num_orientations = inputs
    ctx.save_for_backward(angles)
    ctx.num_orientations = num_orientations


def _backward_turn(ctx, grad):
    (angles,) = ctx.saved_tensors
    return call(turn_orientations_backward_op, grad, angles, ctx.num_orientations), None, None


register_autograd(turn_orientations_op, _backward_turn, _setup_turn)


@forward_op("roiops::riroi_align_rotated")
def riroi_align_rotated_op(
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    num_orientations: int,
    clockwise: bool,
) -> Tensor:
    """``Tensor[K, C * O, pooled_height, pooled_width]``: rotated RoIAlign (radians, not
    aligned), then :func:`turn` (on CPU fused into the pooling's writes); a half map's
    result is rounded once, at the end. The reference backend runs the per-point spec."""
    args = (spatial_scale, pooled_height, pooled_width, sampling_ratio)
    backend = select_backend(input.device)
    if backend in ("reference", "numba"):
        _checked_values(input.device, rois, input.shape[0], *args, num_orientations)
        shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
        if input.numel() == 0 or rois.shape[0] == 0:  # (no cell to read: zeros)
            return input.new_zeros(shape)
        x = input.to(_validate.compute_dtype(input.dtype))
        if backend == "numba":  # (the turn fused into the rotated pooling's writes)
            shift, right, left = orientation_shift(rois[:, 5], num_orientations)
            out = x.new_empty(shape)
            cpu.riroi_align_rotated_forward(
                layout.channels_last_array(x), rois.numpy(), *args, clockwise, shift.numpy(),
                right.to(x.dtype).numpy(), left.to(x.dtype).numpy(), num_orientations,
                out.numpy(),
            )  # fmt: skip
            return out.to(input.dtype)
        out = reference.riroi_align_rotated_forward(host_array(x), host_array(rois), *args,
                                                    num_orientations, clockwise)  # fmt: skip
        return torch.from_numpy(out).to(input.device, input.dtype)
    pooled = rotated_forward(input, rois, *args, False, False, clockwise, OP,
                             _validate.compute_dtype(input.dtype))  # fmt: skip
    if _validate.roi_values_checked(input.device, backend):
        _validate.check_orientation_angles(rois, num_orientations, OP)
    return turn(pooled, rois[:, 5], num_orientations).to(input.dtype)


def _checked_values(device, rois, batch_size, spatial_scale, pooled_height, pooled_width,
                    sampling_ratio, num_orientations):  # fmt: skip
    """The values checks where they are made (rotated RoIAlign's, and the angles')."""
    backend = checked_rotated_backend(device, rois, batch_size, spatial_scale, pooled_height,
                                      pooled_width, sampling_ratio, False, OP)  # fmt: skip
    if _validate.roi_values_checked(device, backend):
        _validate.check_orientation_angles(rois, num_orientations, OP)


@riroi_align_rotated_op.register_fake
def _(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, num_orientations,
      clockwise):  # fmt: skip
    refuse_custom_op(OP)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@custom_op("roiops::riroi_align_rotated_backward")
def riroi_align_rotated_backward_op(
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    num_orientations: int,
    clockwise: bool,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
) -> Tensor:
    """Gradient of ``roiops::riroi_align_rotated`` w.r.t. its input (deterministic)."""
    shape = (batch_size, channels, height, width)
    args = (spatial_scale, pooled_height, pooled_width, sampling_ratio)
    if select_backend(grad.device) == "reference" and grad.numel() and height and width:
        _checked_values(grad.device, rois, batch_size, *args, num_orientations)
        g = grad.to(_validate.compute_dtype(grad.dtype))
        ref = reference.riroi_align_rotated_backward(
            host_array(g), host_array(rois), *args, num_orientations, shape, clockwise
        )
        # (in the layout the other backends give, which the fake implementation states)
        grad_input = new_input_grad(shape, g.dtype, g.device)
        return grad_input.copy_(torch.from_numpy(ref)).to(grad.dtype)
    pooled_grad = turn_backward(grad, rois[:, 5], num_orientations)
    grad_input = rotated_input_grad(pooled_grad, rois, *args, False, False, clockwise, shape,
                                    OP)  # fmt: skip
    return grad_input.to(grad.dtype)


@riroi_align_rotated_backward_op.register_fake
def _(grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, num_orientations,
      clockwise, batch_size, channels, height, width):  # fmt: skip
    return fake_input_grad(grad, batch_size, channels, height, width)


register_input_gradient(riroi_align_rotated_op, riroi_align_rotated_backward_op)
