"""nn.Module wrappers with torchvision's constructor arguments and repr."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from roiops import _validate
from roiops._trace import fx_leaf
from roiops.functional import (
    BoxesArg,
    level_range,
    map_levels,
    multi_scale_roi_align,
    multi_scale_roi_align_rotated,
    multi_scale_roi_pool,
    prroi_pool,
    ps_roi_align,
    ps_roi_pool,
    roi_align,
    roi_align_rotated,
    roi_point_sample,
    roi_pool,
)


class RoIAlign(nn.Module):
    """See :func:`roiops.roi_align`."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
        mode: str = "avg",
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.mode = mode

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_align(
            input,
            rois,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            self.aligned,
            self.mode,
        )

    def __repr__(self) -> str:
        mode = "" if self.mode == "avg" else f", mode={self.mode!r}"
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}{mode})"
        )


class RoIPool(nn.Module):
    """See :func:`roiops.roi_pool`."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )


class PSRoIAlign(nn.Module):
    """See :func:`roiops.ps_roi_align`."""

    def __init__(
        self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio})"
        )


class PSRoIPool(nn.Module):
    """See :func:`roiops.ps_roi_pool`."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )


def infer_scale(name: str, feature: Tensor, image_size: tuple[int, int]) -> float:
    """A feature map's spatial_scale: ``feature size / image size`` rounded to a power of
    two, as torchvision's ``MultiScaleRoIAlign`` infers it (the nearest power in log2,
    halves to even). Plain Python arithmetic, so that ``torch.compile`` keeps it out of
    the graph; torchvision rounds a float32 log2, which could differ only for a ratio
    within 1e-7 of an odd power of sqrt(2), not a ratio of two feature and image sizes.
    A map or image without rows has no scale: a ValueError naming the map (torchvision's
    OverflowError comes from its level mapper)."""
    rows, image_rows = feature.shape[-2], image_size[0]
    if rows <= 0 or image_rows <= 0:
        raise ValueError(
            f"MultiScaleRoIAlign: feature map {name!r} of shape {tuple(feature.shape)} and "
            f"image height {image_rows}: no spatial scale can be inferred from a map or "
            "image without rows"
        )
    return 2.0 ** round(math.log2(float(rows) / float(image_rows)))


@fx_leaf
def pool_pyramid(
    x: dict[str, Tensor],
    boxes: list[Tensor],
    image_shapes: list[tuple[int, int]],
    featmap_names: list[str],
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool = False,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    level_mapper: str = "torchvision",
) -> Tensor:
    """``MultiScaleRoIAlign.forward`` as a function (one leaf node under ``torch.fx``)."""
    names = [k for k in x if k in featmap_names]
    features = [x[k] for k in names]
    size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    scales = [infer_scale(k, f, size) for k, f in zip(names, features, strict=True)]
    if len(features) == 1:
        return roi_align(features[0], boxes, output_size, scales[0], sampling_ratio, aligned)
    k_min, k_max = level_range(scales)
    # (a Tensor[K, 5] of (batch_index, x1, y1, x2, y2), which one level takes as roi_align
    # does, is mapped by its boxes)
    rows = isinstance(boxes, Tensor) and boxes.dim() == 2 and boxes.shape[1] == 5
    mapped = boxes[:, 1:] if rows else boxes
    levels = map_levels(mapped, k_min, k_max, canonical_scale, canonical_level, eps, level_mapper)
    return multi_scale_roi_align(
        features, boxes, output_size, scales, sampling_ratio, aligned, levels
    )


class MultiScaleRoIAlign(nn.Module):
    """The FPN pooler, as ``torchvision.ops.MultiScaleRoIAlign``: same constructor,
    forward and numbers, every level in one kernel launch (torchvision loops over levels
    and scatters each level's RoIs back).

    Beyond torchvision's arguments: ``aligned`` (False as torchvision; True is detectron2's
    ``ROIAlignV2``), ``eps`` and ``level_mapper`` (``"detectron2"`` for ``ROIPooler``'s
    assignment), see :func:`roiops.map_levels`.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        eps: float = 1e-6,
        level_mapper: str = "torchvision",
    ) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.eps = eps
        self.level_mapper = level_mapper

    def forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        """``x``: named feature maps (those in ``featmap_names`` are used, finest
        first); ``boxes``: one ``Tensor[L, 4]`` per image; ``image_shapes``: each image's
        ``(height, width)`` before padding. Returns ``Tensor[K, C, h, w]``."""
        return pool_pyramid(
            x, boxes, image_shapes, self.featmap_names, self.output_size,
            self.sampling_ratio, self.aligned, self.canonical_scale, self.canonical_level,
            self.eps, self.level_mapper,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})"
        )


class RoIAlignRotated(nn.Module):
    """See :func:`roiops.roi_align_rotated`; detectron2's ``ROIAlignRotated(output_size,
    spatial_scale, sampling_ratio)``, with mmcv's options as keywords."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        *,
        aligned: bool = True,
        angle_unit: str = "degrees",
        clockwise: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.angle_unit = angle_unit
        self.clockwise = clockwise

    def forward(self, input: Tensor, rois: BoxesArg) -> Tensor:
        return roi_align_rotated(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
            self.aligned, self.angle_unit, self.clockwise,
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}, angle_unit={self.angle_unit!r}, "
            f"clockwise={self.clockwise})"
        )


class PrRoIPool2D(nn.Module):
    """See :func:`roiops.prroi_pool`; PreciseRoIPooling's
    ``PrRoIPool2D(pooled_height, pooled_width, spatial_scale)``."""

    def __init__(self, pooled_height: int, pooled_width: int, spatial_scale: float) -> None:
        super().__init__()
        self.pooled_height = int(pooled_height)
        self.pooled_width = int(pooled_width)
        self.spatial_scale = float(spatial_scale)

    def forward(self, features: Tensor, rois: BoxesArg) -> Tensor:
        return prroi_pool(
            features, rois, (self.pooled_height, self.pooled_width), self.spatial_scale
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size=({self.pooled_height}, {self.pooled_width}), "
            f"spatial_scale={self.spatial_scale}"
        )


POOLER_TYPES = ("ROIAlign", "ROIAlignV2", "ROIPool", "ROIAlignRotated")


class ROIPooler(nn.Module):
    """detectron2's ``ROIPooler``: pools each box from its FPN level with detectron2's
    level assignment (``map_levels(..., convention="detectron2")``), every level in one
    kernel launch. ``pooler_type``: ``"ROIAlign"`` (``aligned=False``), ``"ROIAlignV2"``
    (``aligned=True``), ``"ROIPool"`` or ``"ROIAlignRotated"`` (rotated boxes, see
    :func:`roiops.multi_scale_roi_align_rotated`; detectron2's convention: aligned,
    degrees, counter-clockwise, levels by the area ``w * h``).

    ``forward(x, box_lists)``: ``x`` the levels (finest first, scales as given), and one
    ``Tensor[L, 4]`` of boxes per image (``Tensor[L, 5]``, ``(cx, cy, w, h, angle)``, for
    ``"ROIAlignRotated"``), or detectron2's ``Boxes`` / ``RotatedBoxes`` (anything that
    holds its boxes as ``.tensor``), as detectron2's ROI heads pass them. Returns
    ``Tensor[K, C, h, w]``.
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        scales: list[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        if pooler_type not in POOLER_TYPES:
            raise ValueError(
                f"ROIPooler: pooler_type must be one of {POOLER_TYPES}, got {pooler_type!r}"
            )
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)
        self.scales = [float(s) for s in scales]
        self.sampling_ratio = sampling_ratio
        self.pooler_type = pooler_type
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, x: list[Tensor], box_lists: list[Tensor]) -> Tensor:
        return pool_detectron2(
            x, box_lists, self.output_size, self.scales, self.sampling_ratio,
            self.pooler_type, self.canonical_box_size, self.canonical_level,
        )  # fmt: skip


@fx_leaf
def pool_detectron2(
    x: list[Tensor],
    box_lists: list[Tensor],
    output_size: tuple[int, int],
    scales: list[float],
    sampling_ratio: int,
    pooler_type: str,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """``ROIPooler.forward`` as a function (one leaf node under ``torch.fx``)."""
    if not isinstance(box_lists, Tensor):  # (a Tensor[K, 5] passes as it is)
        box_lists = [getattr(boxes, "tensor", boxes) for boxes in box_lists]  # (Boxes)
    if len(x) != len(scales):
        raise ValueError(f"ROIPooler: {len(scales)} scales but {len(x)} feature maps")
    batch = x[0].shape[0] if x and isinstance(x[0], Tensor) and x[0].dim() == 4 else None
    if not isinstance(box_lists, Tensor) and batch is not None and len(box_lists) != batch:
        # (detectron2 asserts it: a list for the wrong images is a caller's bug)
        raise ValueError(
            f"ROIPooler: box_lists has {len(box_lists)} entries, one per image, but the "
            f"feature maps hold {batch} images"
        )
    mapper = dict(
        canonical_scale=canonical_box_size,
        canonical_level=canonical_level,
        eps=1e-8,
        level_mapper="detectron2",
    )
    if pooler_type == "ROIPool":
        return multi_scale_roi_pool(x, box_lists, output_size, scales, **mapper)
    if pooler_type == "ROIAlignRotated":
        return multi_scale_roi_align_rotated(
            x, box_lists, output_size, scales, sampling_ratio, True, **mapper
        )
    box_lists, levels = _boxes_as_detectron2_s_roi_align(x, box_lists, scales, mapper)
    return multi_scale_roi_align(
        x, box_lists, output_size, scales, sampling_ratio, pooler_type == "ROIAlignV2",
        levels, **mapper,
    )  # fmt: skip


def _boxes_as_detectron2_s_roi_align(x: list[Tensor], box_lists: BoxesArg, scales: list[float],
                                     mapper: dict) -> tuple[BoxesArg, Tensor | None]:  # fmt: skip
    """``(boxes, levels)`` as detectron2 pools them with ``ROIAlign``: its pooler maps the
    boxes' levels as given, then ``ROIAlign`` casts them to the features' dtype
    (``rois.to(dtype=input.dtype)``), which in half precision rounds them (its AMP
    training: float16 maps, float32 boxes). ``levels`` None where the cast changes
    nothing (the levels are then mapped by the op)."""
    dtype = x[0].dtype if x and isinstance(x[0], Tensor) else None
    parts = [box_lists] if isinstance(box_lists, Tensor) else box_lists
    if (
        dtype is None
        or not dtype.is_floating_point
        or all(not isinstance(b, Tensor) or b.dtype == dtype for b in parts)
    ):
        return box_lists, None
    op = "ROIPooler"
    _validate.boxes_to_rois(box_lists, x[0], op)  # (the op's errors for bad boxes)
    k_min, k_max = level_range([_validate.check_spatial_scale(s, op) for s in scales])
    corners = box_lists[:, 1:] if isinstance(box_lists, Tensor) else box_lists
    levels = map_levels(
        corners, k_min, k_max, mapper["canonical_scale"], mapper["canonical_level"],
        mapper["eps"], mapper["level_mapper"],
    )  # fmt: skip
    if isinstance(box_lists, Tensor):
        return box_lists.to(dtype), levels
    return [b.to(dtype) for b in box_lists], levels


@fx_leaf
def point_sample_fine_grained_features(
    features_list: list[Tensor],
    feature_scales: list[float],
    boxes: list,
    point_coords: Tensor,
) -> tuple[Tensor, Tensor]:
    """detectron2's PointRend ``point_sample_fine_grained_features`` (same arguments and
    results): each RoI's features at its points from every map of ``features_list``
    (``feature_scales``: each map's size over the image's), one
    :func:`roiops.roi_point_sample` a map, aligned (grid_sample's ``align_corners=False``),
    every image's RoIs in one call (detectron2: a ``grid_sample`` per image and map), a
    deterministic backward. ``boxes``: one ``Boxes`` (or ``Tensor[L, 4]``) per image;
    ``point_coords``: ``Tensor[R, P, 2]`` of box-normalised ``[0, 1] x [0, 1]`` points,
    the images' boxes in order. Returns ``(Tensor[R, C_total, P], Tensor[R, P, 2])``: the
    maps' features stacked along the channels, and the points in image coordinates (no
    gradient, as detectron2's)."""
    box_tensors = [getattr(b, "tensor", b) for b in boxes]
    cat_boxes = torch.cat(box_tensors) if box_tensors else point_coords.new_zeros((0, 4))
    with torch.no_grad():  # (detectron2's get_point_coords_wrt_image)
        size = cat_boxes[:, None, 2:] - cat_boxes[:, None, :2]
        wrt_image = point_coords * size + cat_boxes[:, None, :2]
    features = [
        roi_point_sample(f, box_tensors, point_coords, s)
        for f, s in zip(features_list, feature_scales, strict=True)
    ]
    return torch.cat(features, 1), wrt_image
