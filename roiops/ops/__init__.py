"""The ops as ``torch.library`` custom ops: schema, fake impl, autograd, backend dispatch.

The layouts every backend shares (argmax, input gradient) are in ``roiops._layout``;
this module adapts the NumPy reference's readable ``[K, C, ph, pw]`` argmax to them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def host_array(t: Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the host (for the reference backend)."""
    return t.detach().cpu().numpy()


def argmax_from_reference(argmax: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(argmax.transpose(0, 2, 3, 1))).to(device)


def argmax_to_reference(argmax: Tensor) -> np.ndarray:
    return host_array(argmax).transpose(0, 3, 1, 2)
