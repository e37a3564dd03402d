"""The public functions: torchvision.ops-compatible signatures, validated arguments."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from roiops import _validate
from roiops import onnx as _onnx
from roiops._trace import fx_leaf
from roiops.ops import call
from roiops.ops.bezier_align import bezier_align_op
from roiops.ops.crop_and_resize import crop_and_resize_op
from roiops.ops.deform_ps_roi_pool import deform_ps_roi_pool_op
from roiops.ops.deform_roi_pool import deform_roi_pool_op
from roiops.ops.multi_scale_roi_align import (
    multi_scale_roi_align_op,
    multi_scale_roi_align_rotated_op,
    multi_scale_roi_pool_op,
)
from roiops.ops.prroi_pool import prroi_pool_op
from roiops.ops.ps_roi_align import ps_roi_align_op
from roiops.ops.ps_roi_pool import ps_roi_pool_op
from roiops.ops.riroi_align_rotated import riroi_align_rotated_op
from roiops.ops.roi_align import roi_align_max_op, roi_align_onnx_max_op, roi_align_op
from roiops.ops.roi_align_rotated import roi_align_rotated_op
from roiops.ops.roi_point_sample import roi_point_sample_op
from roiops.ops.roi_pool import roi_pool_inference_op, roi_pool_op

BoxesArg = Tensor | list[Tensor] | tuple[Tensor, ...]


@fx_leaf
def roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: Literal["avg", "max", "onnx_max"] = "avg",
) -> Tensor:
    """RoIAlign (Mask R-CNN): pool every box into a fixed grid without quantization.

    Args:
        input: ``Tensor[N, C, H, W]`` feature map (float32/float64; float16/bfloat16 are
            computed in float32 and returned in their own dtype). NCHW or channels_last.
        boxes: ``Tensor[K, 5]`` rows of ``(batch_index, x1, y1, x2, y2)``, or a list of
            ``Tensor[L, 4]`` ``(x1, y1, x2, y2)`` boxes, one tensor per image. Floating
            point, on the input's device, in input-image coordinates.
        output_size: ``h`` or ``(h, w)``, the pooled size (e.g. 7 or (7, 7)).
        spatial_scale: feature-map size / image size, e.g. 1/16 for stride 16. A box
            coordinate ``x`` maps to ``x * spatial_scale`` feature cells.
        sampling_ratio: sampling points per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(bin size)`` points per axis (about one per cell).
        aligned: if True, shift the box by -0.5 cell so that a pixel's value lives at
            its centre (Detectron2 / torchvision ``aligned=True``); False keeps the
            original Mask R-CNN mapping, half a cell off, and forces RoIs smaller than
            one cell to 1x1 (torchvision's legacy behaviour).
        mode: ``"avg"`` averages the bilinearly interpolated sampling points of a bin
            (what torchvision/Detectron2/mmcv ship); ``"max"`` takes their maximum (the
            article's variant; gradient flows to the four neighbours of the winning
            point, with their bilinear weights). ``"onnx_max"`` is ONNX RoiAlign's
            ``max``: the largest weighted corner term ``w_i * v_i`` over the points and
            their four neighbours (not the largest interpolated value; zero-weight
            corners and points outside the map count as 0), what an ONNX runtime
            computes for an exported model (see ``roiops.onnx``); gradient to the
            winning corner only, none to the boxes.

    Returns:
        ``Tensor[K, C, h, w]``.

    A sampling point more than one cell outside the map contributes 0 (avg: it still
    counts in the mean; max: it takes part with value 0). Backward is deterministic.
    """
    op = "roi_align"
    _validate.check_input(input, op)
    pooled_h, pooled_w = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    aligned = _validate.check_aligned(aligned, op)
    mode = _validate.check_mode(mode, op, ("avg", "max", "onnx_max"))
    rois = _validate.boxes_to_rois(boxes, input, op)
    if mode == "onnx_max" and rois.requires_grad:
        raise ValueError(
            "roi_align: mode='onnx_max' gives no gradient w.r.t. the boxes; detach them "
            "(boxes that require grad are supported by mode='avg' and mode='max')"
        )
    params = (scale, pooled_h, pooled_w, ratio, aligned)
    if _onnx.exporting():
        return _onnx.roi_align(
            input, rois, *params, mode, lambda x, r: _roi_align_mode(x, r, params, mode)
        )
    return _roi_align_mode(input, rois, params, mode)


def _roi_align_mode(input: Tensor, rois: Tensor, params: tuple, mode: str) -> Tensor:
    """The custom op of ``mode``, its output."""
    if mode == "avg":
        return call(roi_align_op, input, rois, *params)
    if mode == "onnx_max":
        out, _ = call(roi_align_onnx_max_op, input, rois, *params)
        return out
    out, _ = call(roi_align_max_op, input, rois, *params)
    return out


@fx_leaf
def roi_pool(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool (Fast R-CNN): quantize each box to whole cells, max-pool its bins.

    Args:
        input: ``Tensor[N, C, H, W]`` (float32/float64; float16/bfloat16 are computed in
            float32 and returned in their own dtype). NCHW or channels_last.
        boxes: ``Tensor[K, 5]`` ``(batch_index, x1, y1, x2, y2)`` or a list of
            ``Tensor[L, 4]``, as for :func:`roi_align`.
        output_size: ``h`` or ``(h, w)``.
        spatial_scale: feature-map size / image size.

    Returns:
        ``Tensor[K, C, h, w]``.

    Quantization (as torchvision/Caffe): box edges ``x * spatial_scale`` rounded half
    away from zero, end cell inclusive (a malformed box becomes 1x1); bin ``p`` covers
    cells ``floor(p * s)`` to ``ceil((p + 1) * s)`` with ``s = roi size / output size``,
    clipped to the map. Empty bins give 0. Backward sends each output's gradient to its
    argmax cell, deterministically.
    """
    op = "roi_pool"
    _validate.check_input(input, op)
    pooled_h, pooled_w = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    if _onnx.exporting():
        return _onnx.roi_pool(
            input, rois, scale, pooled_h, pooled_w,
            lambda x, r: roi_pool_inference_op(x, r, scale, pooled_h, pooled_w),
        )  # fmt: skip
    if torch.is_grad_enabled() and (input.requires_grad or rois.requires_grad):
        # (boxes that require grad get none, as from torchvision, but autograd records
        # the call: its output requires grad)
        out, _ = call(roi_pool_op, input, rois, scale, pooled_h, pooled_w)
        return out
    # no gradient will be asked for: skip the argmax, as large as the output
    return call(roi_pool_inference_op, input, rois, scale, pooled_h, pooled_w)


@fx_leaf
def ps_roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoIAlign (R-FCN), as ``torchvision.ops.ps_roi_align``.

    Args:
        input: ``Tensor[N, C, H, W]`` with ``C = C_out * h * w``: one group of ``C_out``
            maps per bin (float32/float64; float16/bfloat16 computed in float32).
        boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, as for :func:`roi_align`.
        output_size: ``h`` or ``(h, w)``.
        spatial_scale: feature-map size / image size.
        sampling_ratio: sampling points per bin and axis; ``<= 0`` adaptive.

    Returns:
        ``Tensor[K, C_out, h, w]``: bin ``(i, j)`` of output channel ``c`` is RoIAlign's
        average (half-pixel aligned, as torchvision's) over input channel
        ``(c * h + i) * w + j``. A bin with an empty adaptive grid (a zero-size box) gives
        0, where torchvision gives NaN (0 / 0). Backward is deterministic.
    """
    op = "ps_roi_align"
    _onnx.not_exportable(op)
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    _validate.check_position_sensitive_channels(input.shape[1], pooled, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    return call(ps_roi_align_op, input, rois, scale, *pooled, ratio)


@fx_leaf
def ps_roi_pool(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoIPool (R-FCN), as ``torchvision.ops.ps_roi_pool``.

    Args:
        input: ``Tensor[N, C, H, W]`` with ``C = C_out * h * w`` (float32/float64;
            float16/bfloat16 computed in float32).
        boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, as for :func:`roi_align`.
        output_size: ``h`` or ``(h, w)``.
        spatial_scale: feature-map size / image size.

    Returns:
        ``Tensor[K, C_out, h, w]``: bin ``(i, j)`` of output channel ``c`` is the
        **average** of its cells in input channel ``(c * h + i) * w + j``. Quantization
        as torchvision's: box edges rounded half away from zero, end exclusive; bins
        ``floor``/``ceil`` of ``p * size / h``, clipped to ``[0, H - 1]`` (torchvision's
        forward never pools the map's last row and column; kept, for its numbers).
        Backward is the exact, deterministic gradient of this forward (torchvision's
        differs from it where a bin reaches the last row or column).
    """
    op = "ps_roi_pool"
    _onnx.not_exportable(op)
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    _validate.check_position_sensitive_channels(input.shape[1], pooled, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    return call(ps_roi_pool_op, input, rois, scale, *pooled)


LEVEL_MAPPERS = ("torchvision", "detectron2")


@fx_leaf
def map_levels(
    boxes: Tensor | Sequence[Tensor],
    k_min: int,
    k_max: int,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    convention: Literal["torchvision", "detectron2"] = "torchvision",
    rotated: bool = False,
) -> Tensor:
    """FPN's level mapper (Lin et al. 2017, eq. 1): the pyramid level of each box,
    ``floor(canonical_level + log2(sqrt(area) / canonical_scale))`` clamped to
    ``[k_min, k_max]``, returned as ``level - k_min`` (int64, on the boxes' device).

    Args:
        boxes: ``Tensor[K, 4]`` ``(x1, y1, x2, y2)`` or a list of them (one per image).
        k_min, k_max: the finest and coarsest levels (2 and 5 for P2-P5).
        canonical_scale, canonical_level: a box of ``canonical_scale`` pixels a side maps
            to ``canonical_level`` (224 and 4, ImageNet's size on ResNet's C4).
        eps: torchvision adds ``eps`` (1e-6) after the log; detectron2 adds it inside the
            log (``log2(size / canonical + eps)``, its ``1e-8``).
        convention: ``"torchvision"`` (``MultiScaleRoIAlign``'s ``LevelMapper``) or
            ``"detectron2"`` (``ROIPooler``'s ``assign_boxes_to_levels``).
        rotated: the boxes are rotated, ``Tensor[K, 5]`` ``(cx, cy, w, h, angle)``, and
            their area ``w * h`` (detectron2's ``RotatedBoxes.area``).

    Computed with the same torch operations as each library, so the levels are theirs;
    an inverted box (negative area) maps to ``k_min``, where both give a NaN level.
    """
    if convention not in LEVEL_MAPPERS:
        raise ValueError(
            f"map_levels: convention must be one of {LEVEL_MAPPERS}, got {convention!r}"
        )
    if not isinstance(boxes, Tensor):
        boxes = torch.cat(list(boxes), dim=0)
    columns = 5 if rotated else 4
    if boxes.dim() != 2 or boxes.shape[1] != columns:
        raise ValueError(
            f"map_levels: boxes must be Tensor[K, {columns}], got {tuple(boxes.shape)}"
        )
    # an inverted box's negative area counts as 0 (the finest level), not as a NaN level
    if rotated:
        area = boxes[:, 2] * boxes[:, 3]
    else:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    size = torch.sqrt(torch.clamp(area, min=0))
    if convention == "torchvision":
        level = torch.floor(
            canonical_level
            + torch.log2(size / canonical_scale)
            + torch.tensor(eps, dtype=size.dtype)
        )
    else:
        level = torch.floor(canonical_level + torch.log2(size / canonical_scale + eps))
    level = torch.clamp(level, min=k_min, max=k_max)
    return level.to(torch.int64) - k_min


def level_range(scales: Sequence[float]) -> tuple[int, int]:
    """``(k_min, k_max)``: the pyramid levels of the finest and the coarsest of
    ``scales`` (checked spatial scales), ``-log2`` of each (whole for powers of two)."""
    return int(-math.log2(scales[0])), int(-math.log2(scales[-1]))


def _pyramid_arguments(op, features, boxes, output_size, scales, levels, canonical_scale,
                       canonical_level, eps, level_mapper, rotated=False):  # fmt: skip
    """Checked ``(features, (h, w), scales, rois, levels)`` of a pyramid pooler call (of
    ``rotated`` boxes: ``rois[K, 6]``); the levels from :func:`map_levels` unless given."""
    features = _validate.check_pyramid(features, op)
    pooled = _validate.output_size_pair(output_size, op)
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"{op}: scales must be a sequence of floats, got {scales!r}")
    if len(scales) != len(features):
        raise ValueError(f"{op}: {len(features)} feature maps but {len(scales)} scales")
    scale_list = [_validate.check_spatial_scale(s, op) for s in scales]
    rois = _validate.boxes_to_rois(boxes, features[0], op, rotated)
    if levels is None:
        k_min, k_max = level_range(scale_list)
        levels = map_levels(
            rois[:, 1:], k_min, k_max, canonical_scale, canonical_level, eps, level_mapper,
            rotated,
        )  # fmt: skip
    elif not isinstance(levels, Tensor) or levels.shape != (rois.shape[0],):
        raise ValueError(f"{op}: levels must be a Tensor[{rois.shape[0]}] of level indices")
    elif levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        # (a float level of 1.5 would become 1 unnoticed; whole values are free to check
        # only on the host)
        raise TypeError(f"{op}: levels must be an integer tensor, got {levels.dtype}")
    levels = levels.to(device=rois.device, dtype=torch.int64).contiguous()
    return features, pooled, scale_list, rois, levels


@fx_leaf
def multi_scale_roi_align(
    features: Sequence[Tensor],
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
    levels: Tensor | None = None,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    level_mapper: Literal["torchvision", "detectron2"] = "torchvision",
) -> Tensor:
    """RoIAlign over a feature pyramid (the FPN pooler), every level in one kernel launch.

    Args:
        features: the levels, finest first: ``Tensor[N, C, H_l, W_l]`` each (at most 5),
            same N, C, dtype and device.
        boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, as for :func:`roi_align`.
        output_size: ``h`` or ``(h, w)``.
        scales: each level's spatial_scale (e.g. 1/4, 1/8, 1/16, 1/32); powers of two,
            the finest first, when the levels are mapped here.
        sampling_ratio, aligned: as for :func:`roi_align` (torchvision's
            ``MultiScaleRoIAlign`` and detectron2's ``ROIAlign`` pooler use
            ``aligned=False``; detectron2's ``ROIAlignV2``, ``aligned=True``).
        levels: ``Tensor[K]`` int64 level of each RoI (0 = ``features[0]``); by default
            :func:`map_levels` of the boxes with ``k_min = -log2(scales[0])``,
            ``k_max = -log2(scales[-1])`` and the mapper arguments below.
        canonical_scale, canonical_level, eps, level_mapper: see :func:`map_levels`.

    Returns:
        ``Tensor[K, C, h, w]``: RoI k is ``roi_align`` of ``features[levels[k]]`` at
        ``scales[levels[k]]`` (average mode); backward is deterministic.
    """
    op = "multi_scale_roi_align"
    features, pooled, scale_list, rois, levels = _pyramid_arguments(
        op, features, boxes, output_size, scales, levels, canonical_scale, canonical_level, eps,
        level_mapper,
    )  # fmt: skip
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    aligned = _validate.check_aligned(aligned, op)
    if _onnx.exporting():
        per_level = [
            roi_align(f, rois, pooled, s, ratio, aligned)
            for f, s in zip(features, scale_list, strict=True)
        ]
        return _onnx.select_levels(per_level, levels)
    return call(
        multi_scale_roi_align_op, list(features), rois, levels, scale_list, *pooled, ratio,
        aligned,
    )  # fmt: skip


@fx_leaf
def roi_align_rotated(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
    angle_unit: Literal["degrees", "radians"] = "degrees",
    clockwise: bool = False,
) -> Tensor:
    """RoIAlign of rotated boxes (detectron2's ``ROIAlignRotated``, mmcv's
    ``roi_align_rotated``).

    Args:
        input: ``Tensor[N, C, H, W]`` (float32/float64; float16/bfloat16 computed in
            float32), NCHW or channels_last.
        boxes: ``Tensor[K, 6]`` rows of ``(batch_index, cx, cy, w, h, angle)``, or a list
            of ``Tensor[L, 5]`` ``(cx, cy, w, h, angle)``, one per image.
        output_size: ``h`` or ``(h, w)``; bins are laid out in the box's own frame.
        spatial_scale: feature-map size / image size.
        sampling_ratio: points per bin and axis; ``<= 0`` adaptive (``ceil(bin size)``).
        aligned: the half-pixel offset (True: detectron2, mmcv's default); False is mmcv's
            legacy mode (no offset, boxes under one cell forced to 1x1).
        angle_unit: ``"degrees"`` (detectron2) or ``"radians"`` (mmcv).
        clockwise: read the angle clockwise (mmcv's flag); by default counter-clockwise.

    Returns:
        ``Tensor[K, C, h, w]``. At angle 0, ``roi_align(..., aligned=True)`` of
        ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``, up to float rounding. Non-finite
        values (angle included) and, when aligned, negative sizes are errors on CPU and
        give NaN outputs on CUDA. Backward is deterministic.
    """
    op = "roi_align_rotated"
    _onnx.not_exportable(op)
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    aligned = _validate.check_aligned(aligned, op)
    degrees, clockwise = _validate.check_angle_convention(angle_unit, clockwise, op)
    rois = _validate.boxes_to_rois(boxes, input, op, rotated=True)
    return call(
        roi_align_rotated_op, input, rois, scale, *pooled, ratio, aligned, degrees, clockwise
    )


@fx_leaf
def riroi_align_rotated(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    num_orientations: int = 8,
    clockwise: bool = False,
) -> Tensor:
    """Rotation-invariant RoIAlign (ReDet, Han et al. 2021; mmcv's ``riroi_align_rotated``,
    the same signature: its ``num_samples`` is ``sampling_ratio``): rotated RoIAlign of
    rotation-equivariant features, whose orientation channels are turned by each box's
    angle so the pooled features do not depend on it.

    Args:
        input: ``Tensor[N, C * O, H, W]``: ``C`` groups of ``O = num_orientations``
            channels, channel ``c * O + j`` the response to orientation ``j * 2 pi / O``
            (e2cnn's regular representation, as ReDet's ReResNet gives it).
        boxes: ``Tensor[K, 6]`` rows of ``(batch_index, cx, cy, w, h, angle)``, the angle
            in radians (mmcv's), or a list of ``Tensor[L, 5]``, one per image. They get
            no gradient (as in mmcv).
        output_size: ``h`` or ``(h, w)``.
        spatial_scale: feature-map size / image size.
        sampling_ratio: points per bin and axis; ``<= 0``: adaptive (mmcv's 0).
        num_orientations: ``O``.
        clockwise: the sampling grid turned clockwise by the angle (mmcv's flag; the
            orientation channels turn the same way either way, as in mmcv).

    Returns:
        ``Tensor[K, C * O, h, w]``: with ``angle * O / (2 pi) = s + f`` (``s`` whole,
        ``0 <= f < 1``), channel ``(c, o)`` is ``1 - f`` times rotated RoIAlign
        (``aligned=False``, mmcv's legacy convention) of channel ``(c, o - s)`` plus
        ``f`` times that of ``(c, o - s + 1)`` (mod O). mmcv's numbers up to float
        rounding (it weights each sampling point, roiops each bin's mean; it has no CPU
        kernel). Non-finite values, and angles so large that ``angle * O`` overflows
        the boxes' dtype, are errors on CPU and give NaN outputs on CUDA. Backward is
        deterministic.
    """
    op = "riroi_align_rotated"
    _onnx.not_exportable(op)
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    _, clockwise = _validate.check_angle_convention("radians", clockwise, op)
    orientations = _validate.check_orientations(num_orientations, input.shape[1], op)
    rois = _validate.boxes_to_rois(boxes, input, op, rotated=True)
    return call(riroi_align_rotated_op, input, rois, scale, *pooled, ratio, orientations,
                clockwise)  # fmt: skip


@fx_leaf
def multi_scale_roi_align_rotated(
    features: Sequence[Tensor],
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = True,
    levels: Tensor | None = None,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    level_mapper: Literal["torchvision", "detectron2"] = "torchvision",
    angle_unit: Literal["degrees", "radians"] = "degrees",
    clockwise: bool = False,
) -> Tensor:
    """Rotated RoIAlign over a feature pyramid (detectron2's ``ROIPooler`` with
    ``pooler_type="ROIAlignRotated"``), every level in one kernel launch.

    Args:
        features: the levels, finest first, as for :func:`multi_scale_roi_align`.
        boxes: ``Tensor[K, 6]`` or a list of ``Tensor[L, 5]``, as for
            :func:`roi_align_rotated`.
        output_size, scales: as for :func:`multi_scale_roi_align`.
        sampling_ratio, aligned, angle_unit, clockwise: as for :func:`roi_align_rotated`
            (detectron2: ``aligned=True``, degrees, counter-clockwise).
        levels: ``Tensor[K]`` int64 level of each RoI; by default :func:`map_levels` of
            the boxes' areas ``w * h`` (``rotated=True``).
        canonical_scale, canonical_level, eps, level_mapper: see :func:`map_levels`.

    Returns:
        ``Tensor[K, C, h, w]``: RoI k is ``roi_align_rotated`` of ``features[levels[k]]``
        at ``scales[levels[k]]``; backward is deterministic. Bad values as for
        :func:`roi_align_rotated` (errors on CPU, NaN outputs on CUDA).
    """
    op = "multi_scale_roi_align_rotated"
    _onnx.not_exportable(op)
    features, pooled, scale_list, rois, levels = _pyramid_arguments(
        op, features, boxes, output_size, scales, levels, canonical_scale, canonical_level, eps,
        level_mapper, rotated=True,
    )  # fmt: skip
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    aligned = _validate.check_aligned(aligned, op)
    degrees, clockwise = _validate.check_angle_convention(angle_unit, clockwise, op)
    return call(
        multi_scale_roi_align_rotated_op, list(features), rois, levels, scale_list, *pooled,
        ratio, aligned, degrees, clockwise,
    )  # fmt: skip


@fx_leaf
def prroi_pool(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Precise RoI Pooling (Jiang et al. 2018): each bin is the exact integral of the
    feature map's bilinear interpolant over the bin, divided by its area.

    Args:
        input: ``Tensor[N, C, H, W]`` (float32/float64; float16/bfloat16 computed in
            float32).
        boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, as for :func:`roi_align`.
            When they require grad, backward also returns the gradient w.r.t. the box
            coordinates (exact: the output is differentiable in them).
        output_size: ``h`` or ``(h, w)``.
        spatial_scale: feature-map size / image size.

    Returns:
        ``Tensor[K, C, h, w]``. Conventions of the reference implementation (PreciseRoIPooling):
        no half-pixel offset, the map padded with zeros outside (not its border
        replicated), a bin of zero area gives 0. Backward is deterministic; the input
        gradient is contiguous NCHW.
    """
    op = "prroi_pool"
    _onnx.not_exportable(op)
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    return call(prroi_pool_op, input, rois, scale, *pooled)


@fx_leaf
def deform_roi_pool(
    input: Tensor,
    boxes: BoxesArg,
    offset: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    gamma: float = 0.1,
) -> Tensor:
    """Deformable RoI pooling (Deformable ConvNets, Dai et al. 2017; mmcv's
    ``deform_roi_pool``, same signature and numbers): :func:`roi_align` with
    ``aligned=True``, each bin ``(ph, pw)`` moved by its learned offset, a fraction of
    the RoI's size.

    Args:
        input: ``Tensor[N, C, H, W]``, as for :func:`roi_align`.
        boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, as for :func:`roi_align`.
            They get no gradient (as in mmcv).
        offset: ``Tensor[K, 2, h, w]``: bin ``(ph, pw)`` of box k starts
            ``gamma * roi_width * offset[k, 0, ph, pw]`` cells further right and
            ``gamma * roi_height * offset[k, 1, ph, pw]`` further down (the RoI's size in
            feature cells; the bins' size and sampling grid stay the RoI's). None: no
            shift, :func:`roi_align` with ``aligned=True``. Backward gives its gradient.
        output_size: ``h`` or ``(h, w)``.
        spatial_scale: feature-map size / image size.
        sampling_ratio: sampling points per bin and axis; ``<= 0``: adaptive (mmcv's 0).
        gamma: the offsets' scale (mmcv's 0.1).

    Returns:
        ``Tensor[K, C, h, w]``. A bin whose offset is NaN or infinite gives NaN (mmcv
        reads a cell at an undefined index) and no gradient. The offset gradient is the
        forward's derivative (the bilinear surface's slope at each point, 0 along an
        axis where the point is clamped into the map); mmcv's kernel's differs from it
        only for points within a cell of the map's border (``roiops.reference.
        deform_roi_pool``). Backward is deterministic.
    """
    op = "deform_roi_pool"
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    gamma = _validate.check_finite(gamma, "gamma", op)
    if offset is None:
        # (a zero shift: the same points, the same numbers)
        return roi_align(input, boxes, pooled, scale, ratio, aligned=True)
    _onnx.not_exportable(op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    offset = _validate.check_offset(offset, rois, pooled, op)
    return call(deform_roi_pool_op, input, rois, offset, scale, *pooled, ratio, gamma)


@fx_leaf
def crop_and_resize(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    crop_size: int | tuple[int, int],
    method: str = "bilinear",
    extrapolation_value: float = 0.0,
) -> Tensor:
    """TensorFlow's ``tf.image.crop_and_resize`` on an NCHW map: the RoI op of TensorFlow's
    detectors (the Object Detection API's Faster R-CNN, matterport's Mask R-CNN), same
    arguments and numbers.

    Args:
        image: ``Tensor[N, C, H, W]`` (TensorFlow's is NHWC).
        boxes: ``Tensor[K, 4]`` of ``(y1, x1, y2, x2)`` in normalized coordinates: 0 is
            the first row or column, 1 the last (``y * (H - 1)``); ``y1 > y2`` flips the
            crop, coordinates outside ``[0, 1]`` sample outside the image. Backward gives
            their gradient (TensorFlow's), bilinear only.
        box_indices: ``Tensor[K]``: each box's image, integers in ``[0, N)``.
        crop_size: ``h`` or ``(h, w)``: the crop's samples, the first and the last on the
            box's edges (one sample: the box's centre).
        method: ``"bilinear"`` or ``"nearest"`` (the rounded position, halves up).
        extrapolation_value: the value of a sample outside the image.

    Returns:
        ``Tensor[K, C, h, w]`` in the image's dtype (TensorFlow's is float32), computed in
        the boxes' compute dtype (float32, float64 for float64 maps). Backward is
        deterministic (TensorFlow's GPU gradients add with atomics and refuse to run
        under its determinism switch).
    """
    op = "crop_and_resize"
    _validate.check_input(image, op)
    size = _validate.output_size_pair(crop_size, op, "crop_size")
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"{op}: method must be 'bilinear' or 'nearest', got {method!r}")
    if isinstance(extrapolation_value, bool) or not isinstance(extrapolation_value, numbers.Real):
        raise TypeError(
            f"{op}: extrapolation_value must be a real number, got {extrapolation_value!r}"
        )
    _onnx.not_exportable(op)
    rois = _validate.indexed_boxes(boxes, box_indices, image, op)
    return call(crop_and_resize_op, image, rois, *size, method == "nearest",
                float(extrapolation_value))  # fmt: skip


@fx_leaf
def deform_ps_roi_pool(
    input: Tensor,
    boxes: BoxesArg,
    offset: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    group_size: int = 1,
    part_size: int | None = None,
    sample_per_part: int = 4,
    trans_std: float = 0.0,
) -> Tensor:
    """Deformable position-sensitive RoI pooling as Deformable ConvNets' authors wrote it
    (Dai et al. 2017): Deformable R-FCN's pooling, and the ``DeformRoIPooling`` of
    mmdetection 1.x and ``dcn_v2_pooling`` of Charles Shang's DCNv2, the same kernel
    (their numbers, their arguments). Not mmcv 2's :func:`deform_roi_pool`.

    Each box is rounded to whole pixels, scaled (its end a pixel further, half a cell
    back: ``start = round(x1) * s - 0.5``, ``end = (round(x2) + 1) * s - 0.5``) and cut
    into ``output_size`` bins; a bin averages ``sample_per_part**2`` bilinear samples (the
    first at its corner), left out where more than half a cell off the map, and moves by
    its part's learned offset.

    Args:
        input: ``Tensor[N, C, H, W]``; ``C`` a multiple of ``group_size**2``.
        boxes: ``Tensor[K, 5]`` or a list of ``Tensor[L, 4]``, as for :func:`roi_align`.
            They get no gradient.
        offset: ``Tensor[K, 2 * classes, part_size, part_size]``: a bin in part
            ``(floor(ph / PH * part_size), floor(pw / PW * part_size))`` moves by
            ``trans_std * offset[k, 2 * j] * roi_width`` right and ``trans_std *
            offset[k, 2 * j + 1] * roi_height`` down, ``j`` the class of its output
            channel (the output channels split evenly into ``classes``; 1: one move for
            all). None: no move (the originals' ``no_trans``). Backward gives its
            gradient.
        output_size: ``h`` or ``(h, w)`` (the originals' ``pooled_size``: square).
        spatial_scale: feature-map size / image size.
        group_size: output channel c of bin (ph, pw) reads input channel ``(c * G + gh)
            * G + gw``, ``gh = floor(ph * G / h)``: ``G = h = w`` for R-FCN's
            position-sensitive maps, 1 (the default) for plain deformable pooling.
        part_size: the offsets' parts an axis; None: ``output_size`` (square only).
        sample_per_part: samples a bin along each axis.
        trans_std: the offsets' scale (the originals' 0.1 in their configs).

    Returns:
        ``Tensor[K, C / group_size**2, h, w]``. A bin whose offset is NaN or infinite
        gives NaN and no gradient. Gradients to the input and to the offsets (each
        sample's bilinear slope; 0 along an axis where it lies on a whole cell, as in the
        original kernel), deterministic.
    """
    op = "deform_ps_roi_pool"
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    group = _validate.check_count(group_size, "group_size", op)
    if part_size is None:
        if pooled[0] != pooled[1]:
            raise ValueError(
                f"{op}: part_size must be given for an output that is not square, got "
                f"output_size {pooled}"
            )
        part_size = pooled[0]
    part = _validate.check_count(part_size, "part_size", op)
    samples = _validate.check_count(sample_per_part, "sample_per_part", op)
    trans_std = _validate.check_finite(trans_std, "trans_std", op)
    channels_out = _validate.check_group_channels(input.shape[1], group, op)
    _onnx.not_exportable(op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    if offset is None:
        offset = rois.new_empty((rois.shape[0], 0, part, part))
    else:
        offset = _validate.check_part_offset(offset, rois, part, channels_out, op)
    return call(deform_ps_roi_pool_op, input, rois, offset, scale, *pooled, samples, group,
                part, trans_std)  # fmt: skip


@fx_leaf
def bezier_align(
    input: Tensor,
    beziers: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> Tensor:
    """BezierAlign (ABCNet, Liu et al. 2020; AdelaiDet's and mmcv's ``bezier_align``, same
    signature and numbers): pools a curved text instance bounded by two cubic Bézier
    curves into a fixed grid.

    Args:
        input: ``Tensor[N, C, H, W]``, as for :func:`roi_align`.
        beziers: ``Tensor[K, 17]`` rows of ``(batch_index, p0x, p0y, p1x, p1y, p2x, p2y,
            p3x, p3y, p7x, p7y, p6x, p6y, p5x, p5y, p4x, p4y)``: the top curve ``p0..p3``,
            then the bottom curve ``p4..p7`` listed from its end (the 16 coordinates
            clockwise around the instance), or a list of ``Tensor[L, 16]``, one per
            image. They get no gradient (as in mmcv).
        output_size: ``h`` or ``(h, w)``: ``h`` bins from the top curve to the bottom
            one, ``w`` along them.
        spatial_scale: feature-map size / image size.
        sampling_ratio: sampling points per bin and axis; ``<= 0``: adaptive (mmcv's 0).
        aligned: the half-pixel offset (``False``: the legacy convention, sizes at least
            one cell).

    Returns:
        ``Tensor[K, C, h, w]``: bin ``(ph, pw)`` is a box of ``roi_width / w`` by
        ``roi_height / h`` cells (``max(|p0 - p3|, |p4 - p7|)`` an axis) centred between
        the curves at ``u = pw / w``, ``v = ph / h`` (AdelaiDet's definition: the bins'
        corners in u and v), averaged over RoIAlign's sampling grid. float32 results are
        mmcv's CPU kernel's bit for bit (its mixed float64 arithmetic included).
        Backward is deterministic.
    """
    op = "bezier_align"
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    aligned = _validate.check_aligned(aligned, op)
    _onnx.not_exportable(op)
    rois = _validate.boxes_to_rois(beziers, input, op, bezier=True)
    return call(bezier_align_op, input, rois, scale, *pooled, ratio, aligned)


@fx_leaf
def simple_roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    aligned: bool = True,
) -> Tensor:
    """PointRend's RoI pooling (Kirillov et al., CVPR 2020; mmcv's ``SimpleRoIAlign``,
    mmdet's PointRend mask RoI layer): one bilinear sample at the centre of each bin, read
    as ``torch.nn.functional.grid_sample`` reads a map (zero padding: a neighbouring cell
    outside the map counts 0, where RoIAlign moves a point near the edge onto it).

    Args:
        input: ``Tensor[N, C, H, W]``, as for :func:`roi_align`.
        boxes: ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)`` or a list of
            ``Tensor[L, 4]``, one per image. They get no gradient (as in mmcv).
        output_size: ``h`` or ``(h, w)``.
        spatial_scale: feature-map size / image size.
        aligned: ``True``: bin ``(ph, pw)`` samples the map at ``x * spatial_scale -
            0.5`` (``x = x1 + (pw + 0.5) / w * (x2 - x1)``, y likewise), grid_sample's
            ``align_corners=False``; ``False``: mmcv's legacy ``x * spatial_scale * (W -
            1) / W`` (``align_corners=True`` on points normalised by the map's size W).

    Returns:
        ``Tensor[K, C, h, w]``, row k for RoI k. mmcv's ``SimpleRoIAlign`` gives the
        same numbers up to float rounding (its points go through normalised coordinates)
        but orders its rows image by image, which is RoI order where the boxes are sorted
        by image (mmdet's are). Backward is deterministic. Exported to ONNX as ``Pad`` and
        ``RoiAlign`` (opset 16+), equal up to float rounding.
    """
    op = "simple_roi_align"
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    aligned = _validate.check_aligned(aligned, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    if _onnx.exporting():
        return simple_roi_align_as_roi_align(input, rois, pooled, scale, aligned)
    out = call(roi_point_sample_op, input, rois, bin_centres(pooled, rois), scale, aligned)
    return out.view(out.shape[0], out.shape[1], *pooled)


def bin_centres(pooled: tuple[int, int], rois: Tensor) -> Tensor:
    """``Tensor[1, h * w, 2]``: the centres ``((pw + 0.5) / w, (ph + 0.5) / h)`` of ``h x w``
    bins as points relative to a RoI, row by row, in the RoIs' dtype and on their device
    (``simple_roi_align``'s points, for :func:`roi_point_sample`)."""
    h, w = pooled
    like = dict(dtype=rois.dtype, device=rois.device)
    u = (torch.arange(w, **like) + 0.5) / w
    v = (torch.arange(h, **like) + 0.5) / h
    return torch.stack([u.expand(h, w), v[:, None].expand(h, w)], 2).view(1, h * w, 2)


@fx_leaf
def roi_point_sample(
    input: Tensor,
    boxes: BoxesArg,
    points: Tensor,
    spatial_scale: float = 1.0,
    aligned: bool = True,
) -> Tensor:
    """PointRend's fine-grained point features (Kirillov et al., CVPR 2020; mmdet's and
    mmcv's ``point_sample`` of ``rel_roi_point_to_rel_img_point``, detectron2's
    ``point_sample_fine_grained_features``): each RoI's features at points given relative
    to the RoI, one bilinear sample a point, read as ``torch.nn.functional.grid_sample``
    reads a map (zero padding), every image's RoIs in one call.

    Args:
        input: ``Tensor[N, C, H, W]``, as for :func:`roi_align`.
        boxes: ``Tensor[K, 5]`` of ``(batch_index, x1, y1, x2, y2)`` or a list of
            ``Tensor[L, 4]``, one per image (the points then in that order).
        points: ``Tensor[K, P, 2]``: RoI k's point p at ``x = x1 + u * (x2 - x1)``, ``y = y1
            + v * (y2 - y1)`` for ``(u, v) = points[k, p]`` (``[0, 1]`` inside the box, any
            value taken: one that is not finite reads 0, as a point past the map), or
            ``Tensor[1, P, 2]``: the same points in every RoI. They and the boxes get no
            gradient (as in mmdet and mmcv, which compute them without).
        spatial_scale: feature-map size / image size.
        aligned: as :func:`simple_roi_align` (``True``: the map point ``x * spatial_scale
            - 0.5``, grid_sample's ``align_corners=False``; ``False``: mmcv's legacy ``x *
            spatial_scale * (W - 1) / W``).

    Returns:
        ``Tensor[K, C, P]``. Backward is deterministic (grid_sample's CUDA backward is
        not). mmdet's loop over the images (``point_sample`` of each image's RoIs, the
        points normalised by the map's size) gives the same numbers up to float rounding.
        Exported to ONNX as ``Pad`` and ``RoiAlign`` (opset 16+), equal up to rounding.
    """
    op = "roi_point_sample"
    _validate.check_input(input, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    aligned = _validate.check_aligned(aligned, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    points = _validate.check_points(points, rois, op)
    if _onnx.exporting():
        return roi_point_sample_as_roi_align(input, rois, points, scale, aligned)
    return call(roi_point_sample_op, input, rois, points, scale, aligned)


def roi_point_sample_as_roi_align(input: Tensor, rois: Tensor, points: Tensor,
                                  spatial_scale: float, aligned: bool) -> Tensor:  # fmt: skip
    """:func:`roi_point_sample` as ONNX writes it (``Pad`` and ``RoiAlign``), equal up to
    float rounding: every point a box of no size (``zero_ring_roi_align``), whose one-point
    bin samples that corner."""
    count, size = rois.shape[0], points.shape[1]
    uv = points.expand(count, size, 2)
    x = rois[:, 1:2] + uv[..., 0] * (rois[:, 3:4] - rois[:, 1:2])
    y = rois[:, 2:3] + uv[..., 1] * (rois[:, 4:5] - rois[:, 2:3])
    corners = torch.stack([x, y, x, y], 2).reshape(count * size, 4)
    batch = rois[:, None, :1].expand(count, size, 1).reshape(count * size, 1)
    out = zero_ring_roi_align(input, batch, corners, (1, 1), spatial_scale, aligned)
    return out.reshape(count, size, input.shape[1]).transpose(1, 2)


def simple_roi_align_as_roi_align(input: Tensor, rois: Tensor, pooled: tuple[int, int],
                                  spatial_scale: float, aligned: bool) -> Tensor:  # fmt: skip
    """:func:`simple_roi_align` as ONNX writes it (``Pad`` and ``RoiAlign``), equal up to
    float rounding: the boxes themselves (``zero_ring_roi_align``), whose one-point bins
    sample the same points."""
    return zero_ring_roi_align(input, rois[:, :1], rois[:, 1:], pooled, spatial_scale, aligned)


def zero_ring_roi_align(input: Tensor, batch: Tensor, corners: Tensor, pooled: tuple[int, int],
                        spatial_scale: float, aligned: bool) -> Tensor:  # fmt: skip
    """Aligned RoIAlign with one point a bin of the boxes ``corners[K, 4]`` (image
    coordinates; images ``batch[K, 1]``) on ``input`` padded by a ring of zero cells:
    grid_sample's zero padding, so each bin reads what :func:`roi_point_sample` reads at
    its centre (the corners moved one cell onto the padded map, scaled as
    ``roi_point_sample`` scales points; RoIAlign clamps what lies past the ring onto it,
    zeros too). Written by ONNX as ``Pad`` and ``RoiAlign``."""
    height, width = input.shape[2], input.shape[3]
    if aligned:  # (RoIAlign's aligned sample lies half a cell before its box's corner)
        corners = corners * spatial_scale + 1.0
    else:  # (points at x * spatial_scale * (W - 1) / W: the corners scaled so)
        factor = [(width - 1) / width, (height - 1) / height] * 2
        corners = (corners * spatial_scale) * corners.new_tensor(factor) + 1.5
    padded = torch.nn.functional.pad(input, (1, 1, 1, 1))
    return roi_align(padded, torch.cat([batch, corners], 1), pooled, 1.0, 1, True)


@fx_leaf
def multi_scale_roi_pool(
    features: Sequence[Tensor],
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    scales: Sequence[float],
    levels: Tensor | None = None,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
    level_mapper: Literal["torchvision", "detectron2"] = "torchvision",
) -> Tensor:
    """RoIPool over a feature pyramid (detectron2's ``ROIPool`` pooler type), every level
    in one kernel launch: RoI k is :func:`roi_pool` of ``features[levels[k]]`` at
    ``scales[levels[k]]``. Arguments as :func:`multi_scale_roi_align`. Backward routes
    each output's gradient to its argmax cell of its level, deterministically."""
    op = "multi_scale_roi_pool"
    features, pooled, scale_list, rois, levels = _pyramid_arguments(
        op, features, boxes, output_size, scales, levels, canonical_scale, canonical_level, eps,
        level_mapper,
    )  # fmt: skip
    if _onnx.exporting():
        per_level = [
            roi_pool(f, rois, pooled, s) for f, s in zip(features, scale_list, strict=True)
        ]
        return _onnx.select_levels(per_level, levels)
    out, _ = call(multi_scale_roi_pool_op, list(features), rois, levels, scale_list, *pooled)
    return out
