"""Layout conventions every backend shares (below ``ops/``, ``cpu/`` and ``gpu/``).

* ``argmax`` (roi_pool, roi_align max mode) is an int32 ``Tensor[K, ph, pw, C]``. Its
  memory follows the kernel that writes it (``new_argmax``): channels last (contiguous),
  as the CPU kernels and the GPU's channels_last forwards write it a channel block at a
  time; channel-major (``[K, C, ph, pw]`` in memory, a permuted view) from the GPU's NCHW
  forwards, whose neighbouring lanes hold neighbouring bins of one channel, so that
  their store is contiguous. Readers take either (``readable_argmax``). The NumPy
  reference keeps the readable ``[K, C, ph, pw]``; ``roiops.ops`` converts.
* input gradients are ``Tensor[N, C, H, W]`` laid out by device (``new_input_grad``):
  channels_last strides on CPU, the layout the Numba kernels write a channel block at a
  time; contiguous NCHW on CUDA, as torchvision returns it, so that autograd need not
  re-lay out a large gradient for the usual NCHW feature maps (the Triton kernels write
  either, by strides).
"""

from __future__ import annotations

import torch
from torch import Tensor


def argmax_shape(num_rois: int, channels: int, pooled_h: int, pooled_w: int):
    return (num_rois, pooled_h, pooled_w, channels)


def is_channels_last(input: Tensor) -> bool:
    """Whether ``input[N, C, H, W]`` lies NHWC in memory (and not also NCHW, as it does
    for one channel or a 1x1 map): the GPU forward then reads it as it is, with lanes over
    channels, instead of copying it to NCHW."""
    return not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)


def argmax_channel_major(input: Tensor, backend: str) -> bool:
    """Whether the forward of ``input`` on ``backend`` writes its argmax channel-major:
    the Triton backend's NCHW kernels do (``new_argmax``)."""
    return backend == "triton" and not is_channels_last(input)


def pyramid_argmax_channel_major(backend: str) -> bool:
    """Whether a pyramid pooler's forward on ``backend`` writes its argmax channel-major:
    the Triton kernel reads every level as NCHW, whatever its layout, and does."""
    return backend == "triton"


def new_argmax(like: Tensor, shape, channel_major: bool) -> Tensor:
    """An empty int32 argmax ``[K, ph, pw, C]`` for outputs ``shape = (K, C, ph, pw)`` on
    ``like``'s device: channel-major (a permuted ``[K, C, ph, pw]``) or channels last."""
    k, c, ph, pw = shape
    if channel_major:
        # the strides a permute of a contiguous [K, C, ph, pw] has (a size-0 dimension
        # counts as 1, as in torch's), in one call: ~2.8 us less host time than an
        # allocation and a permute
        plane = max(ph, 1) * max(pw, 1)
        return like.new_empty_strided((k, ph, pw, c), (max(c, 1) * plane, max(pw, 1), 1, plane),
                                      dtype=torch.int32)  # fmt: skip
    return like.new_empty((k, ph, pw, c), dtype=torch.int32)


def readable_argmax(argmax: Tensor) -> tuple[Tensor, bool]:
    """``(argmax, channel_major)``: ``argmax[K, ph, pw, C]`` in one of the two layouts the
    kernels read (as it lies when it is one, else a contiguous copy) and which one."""
    if argmax.permute(0, 3, 1, 2).is_contiguous():
        return argmax, True
    return argmax.contiguous(), False


def rois_by_image(rois: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """``(order, start)`` on the rois' device: image n's RoIs are
    ``order[start[n]:start[n + 1]]``, in input order (the CPU backward's visiting order)."""
    batch = rois[:, 0].to(torch.int64)
    order = torch.argsort(batch, stable=True)
    start = torch.zeros(batch_size + 1, dtype=torch.int64, device=rois.device)
    start[1:] = torch.cumsum(torch.bincount(batch, minlength=batch_size), 0)
    return order, start


def input_grad_channels_last(device: torch.device | str) -> bool:
    """Whether input gradients on ``device`` have channels_last strides (CPU) or are
    contiguous NCHW (elsewhere)."""
    return torch.device(device).type == "cpu"


def new_input_grad(
    shape, dtype: torch.dtype, device: torch.device | str = "cpu", zeroed: bool = True
) -> Tensor:
    """``Tensor[N, C, H, W]`` in the device's gradient layout; zeroed unless the caller's
    kernel writes every cell (the Triton backward's conversion pass does).

    Autograd accepts it as is; a leaf's ``.grad`` is re-laid out by autograd to match
    the leaf.
    """
    n, c, h, w = shape
    new = torch.zeros if zeroed else torch.empty
    if input_grad_channels_last(device):
        return new((n, h, w, c), dtype=dtype, device=device).permute(0, 3, 1, 2)
    return new((n, c, h, w), dtype=dtype, device=device)


def fake_input_grad(grad: Tensor, batch_size: int, channels: int, height: int, width: int):
    """What ``new_input_grad`` returns, as an empty tensor like ``grad`` (fake impls)."""
    if input_grad_channels_last(grad.device):
        return grad.new_empty((batch_size, height, width, channels)).permute(0, 3, 1, 2)
    return grad.new_empty((batch_size, channels, height, width))
