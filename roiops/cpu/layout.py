"""Tensor <-> array glue shared by the Numba kernels: layouts and work partitioning."""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from roiops._layout import rois_by_image
from roiops.cpu.transpose import nchw_to_nhwc


def channels_last_array(input: Tensor) -> np.ndarray:
    """``Tensor[N, C, H, W]`` -> C-contiguous ``ndarray[N, H, W, C]`` (free if already
    channels_last)."""
    input = input.detach()
    nhwc = input.permute(0, 2, 3, 1)
    if nhwc.is_contiguous():
        return nhwc.numpy()
    n, c, h, w = input.shape
    if input.is_contiguous() and c >= 16 and (h * w * input.element_size()) % 4096 == 0:
        out = torch.empty((n, h, w, c), dtype=input.dtype)
        nchw_to_nhwc(input.numpy(), out.numpy())
        return out.numpy()
    return nhwc.contiguous().numpy()


def grad_array(grad_input: Tensor) -> np.ndarray:
    """The ``ndarray[N, H, W, C]`` behind a tensor made by ``roiops._layout.new_input_grad``."""
    return grad_input.permute(0, 2, 3, 1).numpy()


def backward_tasks(rois: Tensor, batch_size: int, channels: int):
    """``(order, start, channel_block)``: how the backward kernels split their work."""
    order, start = rois_by_image(rois, batch_size)
    return order.numpy(), start.numpy(), backward_channel_block(batch_size, channels)


@numba.njit(cache=True)
def channel_task(task, n_blocks, channel_block, channels):
    """(n, c0, c1): the image and the channels [c0, c1) of backward task ``task`` (the
    backward kernels' tasks run over (image, block of channels), blocks fastest; each
    owns its slice of the gradient)."""
    n = task // n_blocks
    c0 = (task - n * n_blocks) * channel_block
    return n, c0, min(channels, c0 + channel_block)


def plane_backward_tasks(rois: Tensor, batch_size: int, channels: int):
    """``(order, start, channel_block)`` for backward kernels that own whole NCHW planes
    (the position-sensitive ops, prroi_pool): one task per thread and image, so that each
    task resolves every RoI of its image once."""
    order, start = rois_by_image(rois, batch_size)
    tasks_per_image = max(1, -(-numba.get_num_threads() // max(batch_size, 1)))
    return order.numpy(), start.numpy(), -(-channels // tasks_per_image)


def bin_plane_tasks(rois: Tensor, input_shape, pooled_height: int, pooled_width: int, dtype):
    """``(order, start, channel_block)`` for the position-sensitive kernels, which run over
    (image, bin, block of output channels) and keep the block's planes in cache: blocks
    of at most ~256 KiB of planes, and at least about two tasks per thread."""
    batch_size, channels, height, width = input_shape
    bins = pooled_height * pooled_width
    channels_out = channels // bins
    plane_bytes = height * width * torch.finfo(dtype).bits // 8
    order, start = rois_by_image(rois, batch_size)
    block = max(1, min(channels_out, (256 << 10) // max(plane_bytes, 1)))
    wanted_tasks = 2 * numba.get_num_threads()
    tasks = max(batch_size, 1) * bins
    if tasks < wanted_tasks:
        block = min(block, -(-channels_out * tasks // wanted_tasks))
    return order.numpy(), start.numpy(), max(block, 1)


def backward_channel_block(batch_size: int, channels: int) -> int:
    """Channels per backward task: enough tasks to keep every thread busy (about two
    per thread), blocks as wide as possible (>= 64 lets LLVM's vector loop engage)."""
    wanted_tasks = 2 * numba.get_num_threads()
    blocks_per_image = max(1, -(-wanted_tasks // max(batch_size, 1)))
    block = -(-channels // blocks_per_image)
    block = -(-block // 16) * 16  # whole 64-byte lines of float32
    return max(16, min(block, max(channels, 1)))
