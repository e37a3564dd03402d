"""The public functions: torchvision.ops-compatible signatures, validated arguments."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from roiops import _validate
from roiops.ops.ps_roi_align import ps_roi_align_op
from roiops.ops.ps_roi_pool import ps_roi_pool_op
from roiops.ops.roi_align import roi_align_max_op, roi_align_op
from roiops.ops.roi_pool import roi_pool_inference_op, roi_pool_op

BoxesArg = Tensor | list[Tensor] | tuple[Tensor, ...]


def roi_align(
    input: Tensor,
    boxes: BoxesArg,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    mode: Literal["avg", "max"] = "avg",
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
            point, with their bilinear weights).

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
    mode = _validate.check_mode(mode, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    if mode == "avg":
        return roi_align_op(input, rois, scale, pooled_h, pooled_w, ratio, aligned)
    out, _ = roi_align_max_op(input, rois, scale, pooled_h, pooled_w, ratio, aligned)
    return out


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
    if torch.is_grad_enabled() and input.requires_grad:
        out, _ = roi_pool_op(input, rois, scale, pooled_h, pooled_w)
        return out
    # no gradient will be asked for: skip the argmax, as large as the output
    return roi_pool_inference_op(input, rois, scale, pooled_h, pooled_w)


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
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    _validate.check_position_sensitive_channels(input.shape[1], pooled, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    ratio = _validate.check_sampling_ratio(sampling_ratio, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    return ps_roi_align_op(input, rois, scale, *pooled, ratio)


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
    _validate.check_input(input, op)
    pooled = _validate.output_size_pair(output_size, op)
    _validate.check_position_sensitive_channels(input.shape[1], pooled, op)
    scale = _validate.check_spatial_scale(spatial_scale, op)
    rois = _validate.boxes_to_rois(boxes, input, op)
    return ps_roi_pool_op(input, rois, scale, *pooled)
