"""Triton kernels (CUDA tensors; CPU tensors under TRITON_INTERPRET=1), deterministic backward.

Imported lazily by the ops when the triton backend is selected: ``triton.jit`` decides at
import time whether kernels are compiled or interpreted.
"""

from __future__ import annotations

import torch


def scale_tensor(spatial_scale: float, rois: torch.Tensor) -> torch.Tensor:
    """spatial_scale as a one-element tensor in the rois' dtype and on their device.

    Passed as a Python float it would reach the kernels as float32, and float64 inputs
    would not be scaled as the reference scales them.
    """
    return torch.full((1,), spatial_scale, dtype=rois.dtype, device=rois.device)
