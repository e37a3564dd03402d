"""The executable spec: loop-level NumPy implementations, forward and backward.

Readable, slow and obviously correct; every fast kernel is tested against these.
"""

from roiops.reference.roi_align import (
    BilinearWeights,
    RoIAlignGeometry,
    bilinear_weights,
    roi_align_backward,
    roi_align_forward,
    roi_geometry,
    sample_coordinate,
)
from roiops.reference.roi_pool import (
    QuantizedRoI,
    bin_edges,
    quantize_roi,
    roi_pool_backward,
    roi_pool_forward,
    round_half_away,
)

__all__ = [
    "BilinearWeights",
    "QuantizedRoI",
    "RoIAlignGeometry",
    "bilinear_weights",
    "bin_edges",
    "quantize_roi",
    "roi_align_backward",
    "roi_align_forward",
    "roi_geometry",
    "roi_pool_backward",
    "roi_pool_forward",
    "round_half_away",
    "sample_coordinate",
]
