"""roiops: exact, fast, reproducible RoI feature extractors for PyTorch.

Drop-in for ``torchvision.ops.roi_align`` / ``roi_pool`` (same signatures, same
numbers), with deterministic backward passes and parallel CPU kernels.
"""

from roiops._backend import use_backend
from roiops._patch import is_patched, patch, unpatch
from roiops.functional import (
    bezier_align,
    crop_and_resize,
    deform_ps_roi_pool,
    deform_roi_pool,
    map_levels,
    multi_scale_roi_align,
    multi_scale_roi_align_rotated,
    multi_scale_roi_pool,
    prroi_pool,
    ps_roi_align,
    ps_roi_pool,
    riroi_align_rotated,
    roi_align,
    roi_align_rotated,
    roi_point_sample,
    roi_pool,
    simple_roi_align,
)
from roiops.mmcv import (
    BezierAlign,
    DeformRoIPool,
    DeformRoIPoolPack,
    ModulatedDeformRoIPoolPack,
    RiRoIAlignRotated,
    SimpleRoIAlign,
)
from roiops.mmdet import GenericRoIExtractor, SingleRoIExtractor
from roiops.nn import (
    MultiScaleRoIAlign,
    PrRoIPool2D,
    PSRoIAlign,
    PSRoIPool,
    RoIAlign,
    RoIAlignRotated,
    RoIPool,
    ROIPooler,
)

__all__ = [
    "BezierAlign",
    "DeformRoIPool",
    "DeformRoIPoolPack",
    "GenericRoIExtractor",
    "ModulatedDeformRoIPoolPack",
    "MultiScaleRoIAlign",
    "PrRoIPool2D",
    "PSRoIAlign",
    "PSRoIPool",
    "RiRoIAlignRotated",
    "RoIAlign",
    "RoIAlignRotated",
    "ROIPooler",
    "RoIPool",
    "SimpleRoIAlign",
    "SingleRoIExtractor",
    "bezier_align",
    "crop_and_resize",
    "deform_ps_roi_pool",
    "deform_roi_pool",
    "is_patched",
    "map_levels",
    "multi_scale_roi_align",
    "multi_scale_roi_align_rotated",
    "multi_scale_roi_pool",
    "patch",
    "prroi_pool",
    "ps_roi_align",
    "ps_roi_pool",
    "riroi_align_rotated",
    "roi_align",
    "roi_align_rotated",
    "roi_point_sample",
    "roi_pool",
    "simple_roi_align",
    "unpatch",
    "use_backend",
]
__version__ = "0.1.0"

from roiops import onnx as _onnx  # noqa: E402  (after the ops it refers to)

_onnx.register()
