"""The ops as ``torch.library`` custom ops: schema, fake impl, autograd, backend dispatch.

The layouts every backend shares (argmax, input gradient) are in ``roiops._layout``;
this module adapts the NumPy reference's readable ``[K, C, ph, pw]`` argmax to them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from roiops import _validate
from roiops._backend import select_backend


def checked_backend(device: torch.device, rois: Tensor, batch_size: int, op: str, *checks) -> str:
    """The backend that serves ``device``, after checking the boxes' values (and running
    the op's further value ``checks``, zero-argument callables) where reading the values
    is free (``_validate.roi_values_checked``: CPU, the reference backend, or
    ``ROIOPS_CHECK_VALUES=1``); on CUDA the kernels take any value instead."""
    backend = select_backend(device)
    if _validate.roi_values_checked(device, backend):
        _validate.check_roi_values(rois, batch_size, op)
        for check in checks:
            check()
    return backend


def host_array(t: Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the host (for the reference backend)."""
    return t.detach().cpu().numpy()


def argmax_from_reference(argmax: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(argmax.transpose(0, 2, 3, 1))).to(device)


def argmax_to_reference(argmax: Tensor) -> np.ndarray:
    return host_array(argmax).transpose(0, 3, 1, 2)
