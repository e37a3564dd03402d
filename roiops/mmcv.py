"""mmcv.ops' RoI layers with mmcv's signatures and defaults, on roiops' kernels.

Swap ``from mmcv.ops import RoIAlign`` for ``from roiops.mmcv import RoIAlign`` (likewise
``RoIPool``, ``RoIAlignRotated`` and the functions ``roi_align``, ``roi_pool``,
``roi_align_rotated``): the same constructor arguments, mmcv's old names ``out_size`` and
``sample_num`` included, and mmcv's defaults, which are not roiops' (torchvision's): RoIAlign
adaptive (``sampling_ratio=0``) and ``aligned=True``; rotated boxes' angles in radians.
``pool_mode="max"`` is mmcv's max over the sampling points (roiops' ``mode="max"``; a bin
without a sampling point gives 0, where mmcv's CPU kernel gives -10000). mmdet's RoI
extractor is :class:`roiops.SingleRoIExtractor`.
"""

from __future__ import annotations

from torch import Tensor, nn

from roiops import functional as F
from roiops._trace import fx_leaf


def _pick(new: object, old: object, name: str, old_name: str, default: object = None) -> object:
    """An argument given by its name or by mmcv's older name (not both)."""
    if new is not None and old is not None:
        raise TypeError(f"mmcv: {name} and {old_name} (its older name) both given")
    value = new if new is not None else old
    return default if value is None else value


@fx_leaf
def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    pool_mode: str = "avg",
    aligned: bool = True,
) -> Tensor:
    """mmcv's ``roi_align(input, rois, output_size, spatial_scale, sampling_ratio,
    pool_mode, aligned)``: ``rois`` a ``Tensor[K, 5]``; ``pool_mode`` ``"avg"`` or
    ``"max"``."""
    if pool_mode not in ("avg", "max"):
        raise ValueError(f"roi_align: pool_mode must be 'avg' or 'max', got {pool_mode!r}")
    return F.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned,
                       mode=pool_mode)  # fmt: skip


@fx_leaf
def roi_pool(
    input: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float = 1.0
) -> Tensor:
    """mmcv's ``roi_pool(input, rois, output_size, spatial_scale)`` (torchvision's numbers)."""
    return F.roi_pool(input, rois, output_size, spatial_scale)


@fx_leaf
def roi_align_rotated(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = 0,
    aligned: bool = True,
    clockwise: bool = False,
) -> Tensor:
    """mmcv's ``roi_align_rotated``: ``rois`` a ``Tensor[K, 6]`` ``(batch_index, cx, cy,
    w, h, angle)``, the angle in radians (counter-clockwise unless ``clockwise``)."""
    return F.roi_align_rotated(input, rois, output_size, spatial_scale, sampling_ratio,
                               aligned, "radians", clockwise)  # fmt: skip


class RoIAlign(nn.Module):
    """mmcv's ``RoIAlign(output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode="avg",
    aligned=True, use_torchvision=False)`` (``use_torchvision`` changes nothing here: its
    numbers are torchvision's already)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        pool_mode: str = "avg",
        aligned: bool = True,
        use_torchvision: bool = False,
    ) -> None:
        super().__init__()
        if pool_mode not in ("avg", "max"):
            raise ValueError(f"RoIAlign: pool_mode must be 'avg' or 'max', got {pool_mode!r}")
        self.output_size = output_size
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)
        self.sampling_ratio = sampling_ratio
        self.pool_mode = pool_mode
        self.aligned = aligned
        self.use_torchvision = use_torchvision

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.pool_mode, self.aligned)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"pool_mode={self.pool_mode}, aligned={self.aligned}, "
            f"use_torchvision={self.use_torchvision})"
        )


class RoIPool(nn.Module):
    """mmcv's ``RoIPool(output_size, spatial_scale=1.0)``."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )


class RoIAlignRotated(nn.Module):
    """mmcv's ``RoIAlignRotated(output_size, spatial_scale, sampling_ratio=0, aligned=True,
    clockwise=False)`` (or its older ``out_size`` and ``sample_num``): angles in radians."""

    def __init__(
        self,
        output_size: int | tuple[int, int] | None = None,
        spatial_scale: float | None = None,
        sampling_ratio: int | None = None,
        aligned: bool = True,
        clockwise: bool = False,
        *,
        out_size: int | tuple[int, int] | None = None,
        sample_num: int | None = None,
    ) -> None:
        super().__init__()
        self.output_size = _pick(output_size, out_size, "output_size", "out_size")
        if self.output_size is None:
            raise TypeError("RoIAlignRotated: output_size (or out_size) is required")
        if spatial_scale is None:
            raise TypeError("RoIAlignRotated: spatial_scale is required")
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)
        self.sampling_ratio = _pick(sampling_ratio, sample_num, "sampling_ratio", "sample_num", 0)
        self.aligned = aligned
        self.clockwise = clockwise

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_align_rotated(input, rois, self.output_size, self.spatial_scale,
                                 self.sampling_ratio, self.aligned, self.clockwise)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}, clockwise={self.clockwise})"
        )
