"""nn.Module wrappers with torchvision's constructor arguments and repr."""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor, nn

from roiops import mmcv
from roiops._trace import fx_leaf
from roiops._validate import COMPUTE_DTYPES, check_orientations
from roiops.functional import (
    BoxesArg,
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
    roi_pool,
)
from roiops.ops import call
from roiops.ops.riroi_align_rotated import turn_orientations_op


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
    k_min = round(-math.log2(scales[0]))
    k_max = round(-math.log2(scales[-1]))
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
    return multi_scale_roi_align(
        x, box_lists, output_size, scales, sampling_ratio, pooler_type == "ROIAlignV2",
        **mapper,
    )  # fmt: skip


# mmcv's RoI layers that mmdet's extractors build (``roi_layer["type"]``), mmcv's older
# argument names, and what of a built layer the pooling takes
# mmdet's deformable RoI pooling layers (configs/dcn's dpool and mdpool): learned
# parameters, one set per level
DEFORMABLE_LAYERS = ("DeformRoIPoolPack", "ModulatedDeformRoIPoolPack")
# the rotated ones (mmrotate's RotatedSingleRoIExtractor; ReDet's rotation-invariant one)
ROTATED_LAYERS = ("RoIAlignRotated", "RiRoIAlignRotated")
MMCV_LAYERS = ("RoIAlign", "RoIPool", *ROTATED_LAYERS, *DEFORMABLE_LAYERS)
MMCV_ALIASES = {"out_size": "output_size", "sample_num": "sampling_ratio"}
MMCV_ARGUMENTS = ("output_size", "sampling_ratio", "pool_mode", "aligned", "clockwise",
                  "num_orientations", "output_channels", "deform_fc_channels",
                  "gamma")  # fmt: skip


def mmcv_layer(roi_layer: dict) -> tuple[str, dict]:
    """``(type, arguments)`` of an mmdet ``roi_layer`` config such as ``dict(type="RoIAlign",
    output_size=7, sampling_ratio=0)``: the layer built as mmdet builds it (``roiops.mmcv``'s,
    with mmcv's defaults and checks), its arguments read back."""
    config = {MMCV_ALIASES.get(name, name): value for name, value in roi_layer.items()}
    kind = config.pop("type", None)
    if kind not in MMCV_LAYERS:
        raise ValueError(
            f"SingleRoIExtractor: roi_layer type must be one of {MMCV_LAYERS}, got {kind!r}"
        )
    layer_class = getattr(mmcv, kind)
    takes = set(inspect.signature(layer_class).parameters) - {"spatial_scale"}
    for name in config:
        if name not in takes:
            raise TypeError(f"SingleRoIExtractor: {kind} takes no argument {name!r}")
    needs = ("output_size", "output_channels") if kind in DEFORMABLE_LAYERS else ("output_size",)
    for name in needs:
        if config.get(name) is None:
            raise TypeError(f"SingleRoIExtractor: {kind} needs an {name}")
    layer = layer_class(spatial_scale=1.0, **config)
    return kind, {name: getattr(layer, name) for name in MMCV_ARGUMENTS if hasattr(layer, name)}


class SingleRoIExtractor(nn.Module):
    """mmdet's ``SingleRoIExtractor`` (and mmrotate's ``RotatedSingleRoIExtractor``, with a
    ``RoIAlignRotated`` or ``RiRoIAlignRotated`` layer): each RoI pooled from one level,
    chosen by its scale, every level in one kernel launch, with mmdet's numbers and no host
    synchronisation on CUDA (mmdet loops over the levels, a ``nonzero`` each).

    ``roi_layer``: mmdet's config of the mmcv layer, ``dict(type="RoIAlign",
    output_size=7, sampling_ratio=0)`` (``pool_mode="avg"``, ``aligned=True`` by
    default, as mmcv), ``dict(type="RoIPool", output_size=7)`` or
    ``dict(type="RoIAlignRotated", output_size=7, sampling_ratio=2, clockwise=True)``
    (radians, mmcv's convention; ``out_size`` and ``sample_num`` are taken for the old
    names), ReDet's ``dict(type="RiRoIAlignRotated", out_size=7, num_samples=2,
    num_orientations=8, clockwise=True)`` (every level's rotated RoIAlign in one launch,
    then the orientation channels turned; mmrotate's numbers up to float rounding, see
    :func:`roiops.riroi_align_rotated`), or a deformable one,
    ``dict(type="DeformRoIPoolPack", output_size=7, output_channels=256)`` (or
    ``"ModulatedDeformRoIPoolPack"``): one layer per level, in
    ``roi_layers`` as mmdet keeps them (its checkpoints load), each level's RoIs pooled
    by its own layer in a loop over the levels, as mmdet does (a ``nonzero`` each: host
    synchronisations on CUDA; every level's layer runs, on no RoI where it has none, so
    all their parameters get gradients). ``featmap_strides``: each level's stride, finest
    first; ``finest_scale``: ``sqrt(area)`` below ``2 * finest_scale`` maps to level 0 (mmdet's
    ``map_roi_levels``: ``floor(log2(scale / finest_scale + 1e-6))`` clamped, which is
    :func:`roiops.map_levels` with ``convention="detectron2"``, ``canonical_level=0``).

    ``forward(feats, rois, roi_scale_factor=None)``: ``rois`` is ``Tensor[K, 5]``
    (``Tensor[K, 6]``, ``(batch, cx, cy, w, h, angle)``, rotated); ``roi_scale_factor``
    scales every box about its centre after the levels are chosen (not with a single
    level, which mmdet pools directly). ``pool_mode="max"`` is taken with one level only.
    """

    def __init__(
        self,
        roi_layer: dict,
        out_channels: int,
        featmap_strides: list[int],
        finest_scale: int = 56,
        init_cfg: object = None,
    ) -> None:
        super().__init__()
        self.layer_type, self.layer_args = mmcv_layer(roi_layer)
        self.out_channels = int(out_channels)
        self.featmap_strides = list(featmap_strides)
        self.finest_scale = finest_scale
        self.roi_layers = None
        if self.layer_type in DEFORMABLE_LAYERS:
            layer_class = getattr(mmcv, self.layer_type)
            self.roi_layers = nn.ModuleList(
                layer_class(spatial_scale=1 / s, **self.layer_args) for s in featmap_strides
            )

    @property
    def num_inputs(self) -> int:
        return len(self.featmap_strides)

    @property
    def rotated(self) -> bool:
        return self.layer_type in ROTATED_LAYERS

    def map_roi_levels(self, rois: Tensor, num_levels: int) -> Tensor:
        """mmdet's level of each RoI (0 = the finest), by ``sqrt(area)``."""
        return mmdet_levels(rois, num_levels, self.finest_scale, self.rotated)

    def roi_rescale(self, rois: Tensor, scale_factor: float | tuple) -> Tensor:
        """The boxes scaled by ``scale_factor`` about their centres (mmdet's arithmetic)."""
        return mmdet_rescale(rois, scale_factor, self.rotated)

    def forward(
        self, feats: list[Tensor], rois: Tensor, roi_scale_factor: float | tuple | None = None
    ) -> Tensor:
        return pool_mmdet(
            list(feats), rois, roi_scale_factor, self.layer_type, self.layer_args,
            self.out_channels, self.featmap_strides, self.finest_scale, self.roi_layers,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"roi_layer={self.layer_type}({self.layer_args}), out_channels={self.out_channels}, "
            f"featmap_strides={self.featmap_strides}, finest_scale={self.finest_scale}"
        )


def mmdet_levels(rois: Tensor, num_levels: int, finest_scale: float, rotated: bool) -> Tensor:
    """mmdet's ``map_roi_levels``: ``floor(log2(sqrt(area) / finest_scale + 1e-6))``
    clamped to ``[0, num_levels)``, with :func:`roiops.map_levels`' torch operations."""
    return map_levels(rois[:, 1:], 0, num_levels - 1, finest_scale, 0, 1e-6, "detectron2",
                      rotated)  # fmt: skip


def mmdet_rescale(rois: Tensor, scale_factor: float | tuple, rotated: bool) -> Tensor:
    """mmdet's (mmrotate's, ``rotated``: its factor a float or ``(h, w)``) ``roi_rescale``:
    each box scaled about its centre."""
    if rotated:
        h_factor, w_factor = scale_factor if isinstance(scale_factor, tuple) else (
            scale_factor, scale_factor)  # fmt: skip
        scaled = rois.clone()
        scaled[:, 3] = w_factor * rois[:, 3]
        scaled[:, 4] = h_factor * rois[:, 4]
        return scaled
    cx = (rois[:, 1] + rois[:, 3]) * 0.5
    cy = (rois[:, 2] + rois[:, 4]) * 0.5
    w = (rois[:, 3] - rois[:, 1]) * scale_factor
    h = (rois[:, 4] - rois[:, 2]) * scale_factor
    return torch.stack((rois[:, 0], cx - w * 0.5, cy - h * 0.5, cx + w * 0.5, cy + h * 0.5), -1)


@fx_leaf
def pool_mmdet(
    feats: list[Tensor],
    rois: Tensor,
    roi_scale_factor: float | tuple | None,
    layer_type: str,
    layer_args: dict,
    out_channels: int,
    featmap_strides: list[int],
    finest_scale: float,
    roi_layers: nn.ModuleList | None = None,
) -> Tensor:
    """``SingleRoIExtractor.forward`` as a function (one leaf node under ``torch.fx``);
    ``roi_layers``: the deformable layers of the levels."""
    if not feats or len(feats) > len(featmap_strides):
        raise ValueError(
            f"SingleRoIExtractor: 1 to {len(featmap_strides)} feature maps (one per stride), "
            f"got {len(feats)}"
        )
    channels = feats[0].shape[1] if isinstance(feats[0], Tensor) and feats[0].dim() == 4 else None
    if channels is not None and channels != out_channels:
        raise ValueError(
            f"SingleRoIExtractor: out_channels is {out_channels} but the feature maps have "
            f"{channels} channels"
        )
    rotated = layer_type in ROTATED_LAYERS
    columns = 6 if rotated else 5
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != columns:
        fields = "cx, cy, w, h, angle" if rotated else "x1, y1, x2, y2"
        got = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois).__name__
        raise ValueError(
            f"SingleRoIExtractor: rois must be a Tensor[K, {columns}] (batch_index, {fields}), "
            f"got {got}"
        )
    # mmdet: rois.type_as(feats[0]), the features float32 already where they were half
    # (its force_fp32): the boxes in the features' compute dtype (others: the op's error)
    dtype = COMPUTE_DTYPES.get(feats[0].dtype) if isinstance(feats[0], Tensor) else None
    if dtype is not None:
        rois = rois.to(dtype)
    scales = [1.0 / s for s in featmap_strides[: len(feats)]]
    size, ratio = layer_args["output_size"], layer_args.get("sampling_ratio", 0)
    invariant = layer_type == "RiRoIAlignRotated"  # (mmcv's legacy convention: not aligned)
    aligned = False if invariant else layer_args.get("aligned", True)
    angle = dict(angle_unit="radians", clockwise=layer_args.get("clockwise", False))
    if invariant and channels is not None:
        check_orientations(layer_args["num_orientations"], channels, "SingleRoIExtractor")
    if roi_layers is not None:
        return _pool_mmdet_levels(feats, rois, roi_scale_factor, roi_layers, out_channels,
                                  finest_scale)  # fmt: skip
    if len(feats) == 1:  # (mmdet pools one level directly: roi_scale_factor unused)
        if layer_type == "RoIPool":
            return roi_pool(feats[0], rois, size, scales[0])
        if invariant:
            orientations = layer_args["num_orientations"]
            return riroi_align_rotated(feats[0], rois, size, scales[0], ratio, orientations,
                                       angle["clockwise"])  # fmt: skip
        if rotated:
            return roi_align_rotated(feats[0], rois, size, scales[0], ratio, aligned, **angle)
        return roi_align(feats[0], rois, size, scales[0], ratio, aligned, layer_args["pool_mode"])
    if layer_args.get("pool_mode") == "max":
        raise NotImplementedError(
            "SingleRoIExtractor: pool_mode='max' over several levels: roiops' pyramid "
            "poolers average (pass one level, or use pool_mode='avg')"
        )
    levels = mmdet_levels(rois, len(feats), finest_scale, rotated)
    rois = _rescaled(rois, roi_scale_factor, rotated)
    if layer_type == "RoIPool":
        return multi_scale_roi_pool(feats, rois, size, scales, levels)
    if rotated:
        pooled = multi_scale_roi_align_rotated(feats, rois, size, scales, ratio, aligned, levels,
                                               **angle)  # fmt: skip
        if invariant:
            return call(turn_orientations_op, pooled, rois[:, 5], layer_args["num_orientations"])
        return pooled
    return multi_scale_roi_align(feats, rois, size, scales, ratio, aligned, levels)


def _rescaled(rois: Tensor, roi_scale_factor: float | tuple | None, rotated: bool) -> Tensor:
    """The boxes rescaled by mmdet's ``roi_rescale`` (as they are without a factor)."""
    if roi_scale_factor is None:
        return rois
    factor_ok = isinstance(roi_scale_factor, (int, float)) or (
        rotated and isinstance(roi_scale_factor, tuple) and len(roi_scale_factor) == 2)  # fmt: skip
    if not factor_ok:
        raise TypeError(
            f"SingleRoIExtractor: roi_scale_factor must be a number{' or (h, w)' * rotated}, "
            f"got {roi_scale_factor!r}"
        )
    return mmdet_rescale(rois, roi_scale_factor, rotated)


def _pool_mmdet_levels(feats: list[Tensor], rois: Tensor, roi_scale_factor, roi_layers,
                       out_channels: int, finest_scale: float) -> Tensor:  # fmt: skip
    """mmdet's loop over the levels, each level's RoIs pooled by its own layer (the
    deformable ones: their offset heads are the level's)."""
    if len(feats) == 1:  # (mmdet pools one level directly: roi_scale_factor unused)
        return roi_layers[0](feats[0], rois)
    levels = mmdet_levels(rois, len(feats), finest_scale, False)
    rois = _rescaled(rois, roi_scale_factor, False)
    picks = [torch.nonzero(levels == i).squeeze(1) for i in range(len(feats))]
    layers = roi_layers[: len(feats)]
    pooled = [layer(f, rois[pick]) for f, layer, pick in zip(feats, layers, picks, strict=True)]
    out = pooled[0].new_zeros((rois.shape[0], *pooled[0].shape[1:]))
    for pick, part in zip(picks, pooled, strict=True):
        out = out.index_put((pick,), part)
    return out
