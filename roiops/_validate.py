"""The one place that checks and normalises the ops' arguments.

Everything is checked in Python before a kernel runs, and every error names the
argument. Checks that need the boxes' values (finite coordinates, batch indices in
range, adaptive sampling grids of a size a kernel can finish) run inside the custom ops'
real implementations, so they also guard calls made under ``torch.compile``, where the
values are unknown while tracing. They run where reading the values costs nothing: on
CPU tensors, and for the reference backend (which reads them on the host anyway). On
CUDA they would synchronise the host with the device three times a call and break CUDA
graph capture, so there the Triton kernels take any value instead (a RoI with a bad
batch index, a non-finite coordinate or an absurd adaptive grid gives NaN outputs and no
gradient); ``ROIOPS_CHECK_VALUES=1`` checks them there too, for debugging.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from roiops._backend import device_type, getenv

# Half precision is computed in float32 and returned in the input dtype.
COMPUTE_DTYPES = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}


def check_input(input: object, op: str) -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() != 4:
        raise ValueError(f"{op}: input must be 4-D [N, C, H, W], got shape {tuple(input.shape)}")
    if input.dtype not in COMPUTE_DTYPES:
        raise TypeError(
            f"{op}: input must be float32, float64, float16 or bfloat16, got {input.dtype}"
        )
    return input


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return COMPUTE_DTYPES[dtype]


def boxes_to_rois(
    boxes: object, input: Tensor, op: str, rotated: bool = False, bezier: bool = False
) -> Tensor:
    """``Tensor[K, 5]`` or a list/tuple of ``Tensor[L, 4]`` -> ``Tensor[K, 5]`` rois (with
    ``rotated``: ``Tensor[K, 6]`` or a list of ``Tensor[L, 5]``, boxes ``(cx, cy, w, h,
    angle)``; with ``bezier``: ``Tensor[K, 17]`` or a list of ``Tensor[L, 16]``, the
    argument ``beziers``, two cubic Bézier curves' control points).

    The result is contiguous, on the input's device and in the input's compute dtype.
    """
    columns = 16 if bezier else 5 if rotated else 4
    fields = ("p0x, p0y, ..., p3x, p3y, p7x, p7y, ..., p4x, p4y" if bezier
              else "cx, cy, w, h, angle" if rotated else "x1, y1, x2, y2")  # fmt: skip
    argument = "beziers" if bezier else "boxes"
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != columns + 1:
            raise ValueError(
                f"{op}: {argument} as a Tensor must have shape [K, {columns + 1}] "
                f"(batch_index, {fields}), got {tuple(boxes.shape)}"
            )
        _check_box_tensor(boxes, input, op, argument)
        rois = boxes
    elif isinstance(boxes, Sequence) and not isinstance(boxes, str):
        if len(boxes) > input.shape[0]:
            # (a length, free on any device; the batch indices it would give lie past N)
            raise ValueError(
                f"{op}: {argument} is a list of {len(boxes)} tensors, one per image, but "
                f"input has {input.shape[0]} images"
            )
        parts = []
        for i, b in enumerate(boxes):
            name = f"{argument}[{i}]"
            if not isinstance(b, Tensor):
                raise TypeError(
                    f"{op}: {name} must be a Tensor[L, {columns}], got {type(b).__name__}"
                )
            if b.dim() != 2 or b.shape[1] != columns:
                raise ValueError(
                    f"{op}: {name} must have shape [L, {columns}] ({fields}), got {tuple(b.shape)}"
                )
            _check_box_tensor(b, input, op, name)
            index = torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device)
            parts.append(torch.cat([index, b], dim=1))
        if parts:
            rois = torch.cat([p.to(parts[0].dtype) for p in parts], dim=0)
        else:
            rois = input.new_zeros((0, columns + 1))
    else:
        raise TypeError(
            f"{op}: {argument} must be a Tensor[K, {columns + 1}] or a list of "
            f"Tensor[L, {columns}], got {type(boxes).__name__}"
        )
    dtype = compute_dtype(input.dtype)
    if rois.dtype != dtype:  # (``to`` would return rois itself, after parsing its arguments)
        rois = rois.to(dtype)
    return rois.contiguous()


def _check_box_tensor(b: Tensor, input: Tensor, op: str, name: str) -> None:
    if not b.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating point tensor, got {b.dtype}")
    if b.device != input.device:
        raise ValueError(
            f"{op}: {name} is on {b.device} but input is on {input.device}; "
            "put both on the same device"
        )


CHECK_VALUES_VAR = "ROIOPS_CHECK_VALUES"


def roi_values_checked(device: torch.device, backend: str) -> bool:
    """Whether the ops check the boxes' values before running ``backend`` on ``device``
    (read at every call)."""
    return (
        device_type(device) == "cpu"
        or backend == "reference"
        or getenv(CHECK_VALUES_VAR, "0") == "1"
    )


def check_roi_values(rois: Tensor, batch_size: int, op: str,
                     indices: str = "boxes' batch indices") -> None:  # fmt: skip
    """Finite coordinates and integer batch indices in [0, batch_size); ``indices``: what
    the op's caller calls the batch indices (column 0 of the boxes by default)."""
    if rois.shape[0] == 0:
        return
    if not bool(torch.isfinite(rois[:, 1:]).all()):
        raise ValueError(f"{op}: boxes contain NaN or infinite coordinates")
    index = rois[:, 0]
    if not bool((index == torch.floor(index)).all()):
        column = " (column 0)" if indices == "boxes' batch indices" else ""
        raise ValueError(f"{op}: {indices}{column} must be whole numbers")
    low, high = float(index.min()), float(index.max())
    if low < 0 or high >= batch_size:
        raise ValueError(
            f"{op}: {indices} must lie in [0, {batch_size}) for an input of "
            f"{batch_size} images, got values in [{low:g}, {high:g}]"
        )


def check_scaled_boxes(rois: Tensor, spatial_scale: float | Tensor, op: str) -> None:
    """Boxes (``rois[K, 5]``) whose corners and sides times ``spatial_scale`` (a float, or
    a ``Tensor[K]`` of each RoI's scale) are finite, computed as the kernels compute
    them: in the RoIs' dtype, the scale rounded to it. A box of finite coordinates can
    overflow there (a large scale, or a side wider than the dtype holds); RoIPool's
    rounding of such a box has no answer."""
    if rois.shape[0] == 0:
        return
    # the common case in one reduction: no corner near the range's end (a quarter of the
    # largest value leaves room for the sides and the products' rounding)
    largest_scale = float(spatial_scale.max()) if isinstance(spatial_scale, Tensor) else (
        spatial_scale)  # fmt: skip
    if float(rois[:, 1:5].abs().amax()) * largest_scale < torch.finfo(rois.dtype).max / 4:
        return
    scale = rois.new_tensor(spatial_scale) if not isinstance(spatial_scale, Tensor) else (
        spatial_scale.to(rois.dtype)[:, None])  # fmt: skip
    corners = rois[:, 1:5] * scale
    sides = corners[:, 2:] - corners[:, :2]
    bad = ~(torch.isfinite(corners).all(1) & torch.isfinite(sides).all(1))
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        scale_k = float(scale if scale.dim() == 0 else scale[k, 0])
        raise ValueError(
            f"{op}: boxes: box {k} {rois[k, 1:].tolist()} times spatial_scale {scale_k:g} "
            f"overflows {rois.dtype} (its scaled corners or sides are not finite)"
        )


# With adaptive sampling (sampling_ratio <= 0) a bin takes ceil(bin size) points along
# each axis, so a box some hundred thousand cells across (a diverging model's, or one in
# the wrong units) asks for billions of points a bin: a kernel busy for hours, in
# torchvision too (which, where the count passes 2**31, instead samples whatever its
# float-to-int conversion gives). A box whose grid would have more points than this a
# bin along an axis is a bad box value, like a NaN: a ValueError where the values are
# checked, an invalid RoI (NaN outputs, no gradient) in the CUDA kernels.
MAX_ADAPTIVE_GRID = 2**16


def check_adaptive_grid(rois: Tensor, spatial_scale: float | Tensor, pooled_height: int,
                        pooled_width: int, sampling_ratio: int, aligned: bool, op: str,
                        rotated: bool = False) -> None:  # fmt: skip
    """With adaptive sampling (``sampling_ratio <= 0``), at most ``MAX_ADAPTIVE_GRID``
    points a bin along each axis, counted as the kernels count them: in the RoIs' dtype,
    ``spatial_scale`` (a float, or a ``Tensor[K]`` of the RoIs' own scales) rounded to
    it; rotated boxes' sizes are columns 3 and 4."""
    if sampling_ratio > 0 or rois.shape[0] == 0:
        return
    scale = rois.new_tensor(spatial_scale) if not isinstance(spatial_scale, Tensor) else (
        spatial_scale.to(rois.dtype)[:, None])  # fmt: skip
    if rotated:
        sizes = rois[:, 3:5] * scale
    else:
        offset = 0.5 if aligned else 0.0
        sizes = (rois[:, 3:5] * scale - offset) - (rois[:, 1:3] * scale - offset)
    check_grid_sizes(sizes, aligned, pooled_height, pooled_width, op)


def bezier_sizes(rois: Tensor, spatial_scale: float) -> Tensor:
    """``Tensor[K, 2]``: the (width, height) of Bézier RoIs ``(batch_index, p0, ..., p3,
    p7, ..., p4)`` (x, y each) in feature cells, ``max(|p0 - p3|, |p4 - p7|)`` an axis
    (``roiops.reference.bezier_align``)."""
    points = rois[:, 1:].reshape(-1, 8, 2) * spatial_scale
    return torch.maximum((points[:, 0] - points[:, 3]).abs(), (points[:, 7] - points[:, 4]).abs())


def check_grid_sizes(sizes: Tensor, aligned: bool, pooled_height: int, pooled_width: int,
                     op: str) -> None:  # fmt: skip
    """``check_adaptive_grid``'s test, on the RoIs' (width, height) ``sizes[K, 2]``."""
    if not aligned:
        sizes = sizes.clamp(min=1.0)
    grid = torch.ceil(sizes / sizes.new_tensor([pooled_width, pooled_height]))
    too_many = (grid > MAX_ADAPTIVE_GRID).any(1)
    if bool(too_many.any()):
        k = int(too_many.nonzero()[0, 0])
        count = float(grid[k].max())
        points = f"{count:.0f}" if count < 1e15 else f"{count:.3g}"
        raise ValueError(
            f"{op}: boxes: box {k} asks for {points} sampling points a bin along an axis "
            f"with adaptive sampling (sampling_ratio <= 0), more than the {MAX_ADAPTIVE_GRID} "
            "roiops takes (it would run for hours); clip the boxes, or pass a "
            "sampling_ratio > 0"
        )


MAX_LEVELS = 5  # the GPU kernels take the levels side by side (P2-P6)


def check_pyramid(features: object, op: str) -> list[Tensor]:
    """A feature pyramid: 1 to MAX_LEVELS maps [N, C, H_l, W_l] with the same N, C, dtype
    and device."""
    if isinstance(features, Tensor) or not isinstance(features, Sequence):
        raise TypeError(f"{op}: features must be a list of Tensor[N, C, H, W], got {features!r}")
    features = list(features)
    if not 1 <= len(features) <= MAX_LEVELS:
        raise ValueError(f"{op}: features must hold 1 to {MAX_LEVELS} maps, got {len(features)}")
    for i, f in enumerate(features):
        check_input(f, f"{op}: features[{i}]")
        first = features[0]
        if (f.shape[:2], f.dtype, f.device) != (first.shape[:2], first.dtype, first.device):
            raise ValueError(
                f"{op}: features[{i}] is {tuple(f.shape)} {f.dtype} on {f.device}, but "
                f"features[0] is {tuple(first.shape)} {first.dtype} on {first.device}: "
                "every level needs the same N, C, dtype and device"
            )
    return features


def check_levels(levels: Tensor, num_levels: int, op: str) -> None:
    """Pyramid levels of the RoIs: whole numbers in [0, num_levels)."""
    if levels.numel() and (int(levels.min()) < 0 or int(levels.max()) >= num_levels):
        raise ValueError(
            f"{op}: levels must lie in [0, {num_levels}) for {num_levels} feature maps, "
            f"got values in [{int(levels.min())}, {int(levels.max())}]"
        )


def check_angle_convention(angle_unit: object, clockwise: object, op: str) -> tuple[bool, bool]:
    """``(degrees, clockwise)`` of rotated boxes' angle convention."""
    if angle_unit not in ("degrees", "radians"):
        raise ValueError(f"{op}: angle_unit must be 'degrees' or 'radians', got {angle_unit!r}")
    if not isinstance(clockwise, bool):
        raise TypeError(f"{op}: clockwise must be a bool, got {clockwise!r}")
    return angle_unit == "degrees", clockwise


def check_rotated_sizes(rois: Tensor, op: str) -> None:
    """Rotated boxes' widths and heights (columns 3 and 4) must not be negative."""
    if rois.shape[0] and bool((rois[:, 3:5] < 0).any()):
        raise ValueError(f"{op}: boxes must not have a negative width or height")


def output_size_pair(output_size: object, op: str, name: str = "output_size") -> tuple[int, int]:
    if type(output_size) is int and output_size > 0:  # the common case, without ABC checks
        return output_size, output_size
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        pair = (int(output_size), int(output_size))
    elif isinstance(output_size, Sequence) and len(output_size) == 2:
        if not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in output_size
        ):
            raise TypeError(f"{op}: {name} must hold integers, got {output_size!r}")
        pair = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"{op}: {name} must be an int or a pair (h, w), got {output_size!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{op}: {name} must be positive, got {output_size!r}")
    return pair


def indexed_boxes(boxes: object, box_indices: object, input: Tensor, op: str) -> Tensor:
    """TensorFlow's ``boxes[K, 4]`` and ``box_indices[K]`` (each box's image) -> ``Tensor[K,
    5]`` rows (image, box), on the input's device and in its compute dtype (the boxes'
    gradient flows back through them)."""
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{op}: boxes must be a Tensor[K, 4] of (y1, x1, y2, x2), got {shape}")
    _check_box_tensor(boxes, input, op, "boxes")
    if not isinstance(box_indices, Tensor) or tuple(box_indices.shape) != (boxes.shape[0],):
        shape = tuple(box_indices.shape) if isinstance(box_indices, Tensor) else (
            type(box_indices).__name__)  # fmt: skip
        raise ValueError(
            f"{op}: box_indices must be a Tensor[K] (K = {boxes.shape[0]} boxes), got {shape}"
        )
    if box_indices.is_complex() or box_indices.dtype == torch.bool:
        raise TypeError(f"{op}: box_indices must hold integers, got {box_indices.dtype}")
    if box_indices.device != input.device:
        raise ValueError(
            f"{op}: box_indices is on {box_indices.device} but input is on {input.device}; "
            "put both on the same device"
        )
    dtype = compute_dtype(input.dtype)
    return torch.cat([box_indices.to(dtype)[:, None], boxes.to(dtype)], 1).contiguous()


def check_spatial_scale(spatial_scale: object, op: str) -> float:
    if type(spatial_scale) is float and 0 < spatial_scale < math.inf:  # the common case
        return spatial_scale
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"{op}: spatial_scale must be a real number, got {spatial_scale!r}")
    value = float(spatial_scale)
    # comparisons, not math.isfinite: under torch.compile(dynamic=True) a module's float
    # attribute arrives as a SymFloat, which compares (and guards) but has no isfinite
    if not 0 < value < math.inf:  # NaN fails both
        raise ValueError(f"{op}: spatial_scale must be positive and finite, got {spatial_scale!r}")
    return value


def check_offset(offset: object, rois: Tensor, pooled: tuple[int, int], op: str) -> Tensor:
    """A deformable op's per-bin offsets: ``Tensor[K, 2, PH, PW]`` of floating point on the
    RoIs' device, returned contiguous in the RoIs' (compute) dtype."""
    if not isinstance(offset, Tensor):
        raise TypeError(f"{op}: offset must be a Tensor or None, got {type(offset).__name__}")
    shape = (rois.shape[0], 2, *pooled)
    if tuple(offset.shape) != shape:
        raise ValueError(
            f"{op}: offset must have shape [K, 2, PH, PW] = {list(shape)} (an (x, y) shift "
            f"per RoI and bin), got {tuple(offset.shape)}"
        )
    return like_rois(offset, rois, "offset", op)


def check_part_offset(offset: object, rois: Tensor, part_size: int, channels_out: int,
                      op: str) -> Tensor:  # fmt: skip
    """Deformable PS RoI pooling's offsets: ``Tensor[K, 2 * classes, part_size,
    part_size]`` (an (x, y) shift per RoI, class of output channels and part), the
    classes splitting the output channels evenly; returned as ``like_rois``."""
    if not isinstance(offset, Tensor):
        raise TypeError(f"{op}: offset must be a Tensor or None, got {type(offset).__name__}")
    shape = tuple(offset.shape)
    if (len(shape) != 4 or shape[0] != rois.shape[0] or shape[1] < 2 or shape[1] % 2
            or shape[2:] != (part_size, part_size)):  # fmt: skip
        raise ValueError(
            f"{op}: offset must have shape [K, 2 * classes, part_size, part_size] = "
            f"[{rois.shape[0]}, 2 * classes, {part_size}, {part_size}] (an (x, y) shift per "
            f"RoI, class and part), got {shape}"
        )
    classes = shape[1] // 2
    if channels_out % classes:
        raise ValueError(
            f"{op}: offset has {classes} classes (shape[1] / 2), which do not split the "
            f"{channels_out} output channels evenly"
        )
    return like_rois(offset, rois, "offset", op)


def check_points(points: object, rois: Tensor, op: str) -> Tensor:
    """Points in RoIs: ``Tensor[K, P, 2]`` (or ``[1, P, 2]``, every RoI's) of floating
    point on the RoIs' device, returned contiguous in the RoIs' (compute) dtype."""
    if not isinstance(points, Tensor):
        raise TypeError(f"{op}: points must be a Tensor[K, P, 2], got {type(points).__name__}")
    count = rois.shape[0]
    if points.dim() != 3 or points.shape[2] != 2 or points.shape[0] not in (1, count):
        raise ValueError(
            f"{op}: points must have shape [K, P, 2] (a RoI's points as (u, v), relative to "
            f"the RoI) or [1, P, 2] (every RoI's), for K = {count} RoIs, got "
            f"{tuple(points.shape)}"
        )
    return like_rois(points, rois, "points", op)


def like_rois(t: Tensor, rois: Tensor, name: str, op: str) -> Tensor:
    """An op's per-RoI tensor argument ``name`` (offsets, points): floating point, on the
    RoIs' device; returned contiguous in the RoIs' (compute) dtype."""
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating point tensor, got {t.dtype}")
    if t.device != rois.device:
        raise ValueError(
            f"{op}: {name} is on {t.device} but input is on {rois.device}; "
            "put both on the same device"
        )
    return t.to(rois.dtype).contiguous()


def check_finite(value: object, name: str, op: str) -> float:
    """A real-number argument ``name`` that must be finite (``gamma``, ``trans_std``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    number = float(value)
    if not -math.inf < number < math.inf:
        raise ValueError(f"{op}: {name} must be finite, got {value!r}")
    return number


def check_count(value: object, name: str, op: str) -> int:
    """A whole-number argument ``name`` that must be at least 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{op}: {name} must be at least 1, got {value!r}")
    return int(value)


def check_sampling_ratio(sampling_ratio: object, op: str) -> int:
    if type(sampling_ratio) is int:  # the common case, without ABC checks
        return sampling_ratio
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, numbers.Integral):
        raise TypeError(
            f"{op}: sampling_ratio must be an integer (<= 0 for adaptive), got {sampling_ratio!r}"
        )
    return int(sampling_ratio)


def check_aligned(aligned: object, op: str) -> bool:
    if not isinstance(aligned, bool):
        raise TypeError(f"{op}: aligned must be a bool, got {aligned!r}")
    return aligned


def check_mode(mode: object, op: str, modes: tuple[str, ...] = ("avg", "max")) -> str:
    if mode not in modes:
        names = ", ".join(repr(m) for m in modes)
        raise ValueError(f"{op}: mode must be one of {names}, got {mode!r}")
    return mode


def check_group_channels(channels: int, group_size: int, op: str) -> int:
    """The output channels of a position-sensitive op with ``group_size`` x
    ``group_size`` groups of maps (Deformable R-FCN's): the input's divided by that."""
    groups = group_size * group_size
    if channels % groups:
        raise ValueError(
            f"{op}: input has {channels} channels, not a multiple of group_size**2 = {groups} "
            "(one channel per group and output channel)"
        )
    return channels // groups


def check_position_sensitive_channels(channels: int, pooled: tuple[int, int], op: str) -> int:
    """The output channels of a position-sensitive op: the input's channels must be a
    multiple of the output area, one group of maps per bin."""
    area = pooled[0] * pooled[1]
    if channels % area:
        raise ValueError(
            f"{op}: input has {channels} channels, not a multiple of the output area "
            f"{pooled[0]} x {pooled[1]} = {area} (one channel per bin and output channel)"
        )
    return channels // area


def check_orientations(num_orientations: object, channels: int, op: str) -> int:
    """ReDet's orientation channels: a positive count that divides the input's channels
    (``C`` groups of ``O``)."""
    count = check_count(num_orientations, "num_orientations", op)
    if channels % count:
        raise ValueError(
            f"{op}: input has {channels} channels, not a multiple of num_orientations "
            f"{count} (groups of one channel per orientation)"
        )
    return count


def check_orientation_angles(rois: Tensor, num_orientations: int, op: str) -> None:
    """Rotated boxes' angles times ``num_orientations`` finite in the boxes' dtype (mmcv's
    orientation arithmetic forms that product; beyond float32's range it would make the
    RoI's outputs NaN)."""
    product = rois[:, 5] * num_orientations
    bad = ~torch.isfinite(product)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{op}: boxes: box {k}'s angle {float(rois[k, 5]):g} times num_orientations "
            f"{num_orientations} overflows {str(rois.dtype).removeprefix('torch.')}"
        )


def check_plane_indexable(input_shape: Sequence[int], op: str) -> None:
    """Offsets within one [H, W] plane are int32: roi_pool's argmax (as in torchvision)
    and the Triton kernels' in-plane arithmetic. Offsets across planes are int64."""
    height, width = input_shape[-2], input_shape[-1]
    if height * width >= 2**31:
        raise ValueError(
            f"{op}: input's H * W = {height * width} is too large: one [H, W] plane must "
            "have fewer than 2**31 cells"
        )
