"""``roiops.patch()``: torchvision's RoI ops and modules run on roiops.

After ``patch()``, ``torchvision.ops.roi_align``, ``roi_pool``, ``ps_roi_align`` and
``ps_roi_pool`` are roiops' functions wherever torchvision's modules hold them (also
under their own modules, e.g. ``torchvision.ops.poolers.roi_align``, which is what
``MultiScaleRoIAlign`` calls), and the ``forward`` of ``RoIAlign``, ``RoIPool``,
``PSRoIAlign``, ``PSRoIPool`` and ``MultiScaleRoIAlign`` calls roiops, so models built
before the patch switch too. An unmodified detection model
(``torchvision.models.detection.maskrcnn_resnet50_fpn`` and its relatives) then pools
with roiops: same numbers as torchvision on CPU, deterministic backward, the Triton
kernels on CUDA, one launch for all FPN levels. ``unpatch()`` restores everything.

Differences a patched model can meet: roiops accepts boxes of another floating dtype
than the features (torchvision requires the same), and its functions are Python, so a
patched model cannot be ``torch.jit.script``-ed (use ``torch.compile`` or ``torch.export``).
"""

from __future__ import annotations

import sys
import threading

import roiops
from roiops import nn as roiops_nn

_lock = threading.Lock()
# (owner, attribute name, original value) of everything patch() replaced, in order
_replaced: list[tuple[object, str, object]] = []


def _roi_align_forward(self, input, rois):
    return roiops.roi_align(
        input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
    )


def _roi_pool_forward(self, input, rois):
    return roiops.roi_pool(input, rois, self.output_size, self.spatial_scale)


def _ps_roi_align_forward(self, input, rois):
    return roiops.ps_roi_align(
        input, rois, self.output_size, self.spatial_scale, self.sampling_ratio
    )


def _ps_roi_pool_forward(self, input, rois):
    return roiops.ps_roi_pool(input, rois, self.output_size, self.spatial_scale)


def _multi_scale_forward(self, x, boxes, image_shapes):
    return roiops_nn.pool_pyramid(
        x, boxes, image_shapes, self.featmap_names, self.output_size, self.sampling_ratio,
        False, self.canonical_scale, self.canonical_level,
    )  # fmt: skip


def _targets():
    """``(functions, forwards)``: torchvision's functions -> roiops', and its module
    classes -> the roiops ``forward`` that replaces theirs."""
    import torchvision.ops as tv

    functions = {
        tv.roi_align: roiops.roi_align,
        tv.roi_pool: roiops.roi_pool,
        tv.ps_roi_align: roiops.ps_roi_align,
        tv.ps_roi_pool: roiops.ps_roi_pool,
    }
    forwards = {
        tv.RoIAlign: _roi_align_forward,
        tv.RoIPool: _roi_pool_forward,
        tv.PSRoIAlign: _ps_roi_align_forward,
        tv.PSRoIPool: _ps_roi_pool_forward,
        tv.MultiScaleRoIAlign: _multi_scale_forward,
    }
    return functions, forwards


def patch() -> None:
    """Make torchvision's RoI ops and modules use roiops (idempotent; needs torchvision)."""
    try:
        functions, forwards = _targets()
    except ImportError as e:
        raise ImportError("roiops.patch() needs torchvision: pip install torchvision") from e
    with _lock:
        if _replaced:
            return
        by_id = {id(original): ours for original, ours in functions.items()}
        for name, module in list(sys.modules.items()):
            if module is None or not (name == "torchvision" or name.startswith("torchvision.")):
                continue
            for attr, value in list(vars(module).items()):
                if id(value) in by_id:
                    _replaced.append((module, attr, value))
                    setattr(module, attr, by_id[id(value)])
        for cls, forward in forwards.items():
            _replaced.append((cls, "forward", cls.__dict__["forward"]))
            cls.forward = forward


def unpatch() -> None:
    """Undo :func:`patch` (a no-op if torchvision is not patched)."""
    with _lock:
        while _replaced:
            owner, attr, original = _replaced.pop()
            setattr(owner, attr, original)


def is_patched() -> bool:
    return bool(_replaced)
