"""mmdet's (and mmrotate's) RoI extractors: the modules a two-stage detector's RoI head
calls with the FPN levels and the proposals, built from mmdet's configs of mmcv's RoI
layers (``roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)``) and
pooling with roiops' ops."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from roiops import mmcv
from roiops._trace import fx_leaf
from roiops._validate import COMPUTE_DTYPES, check_orientations
from roiops.functional import (
    map_levels,
    multi_scale_roi_align,
    multi_scale_roi_align_rotated,
    multi_scale_roi_pool,
    riroi_align_rotated,
    roi_align,
    roi_align_rotated,
    roi_pool,
)
from roiops.ops import call
from roiops.ops.riroi_align_rotated import turn_orientations_op

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


def mmcv_layer(roi_layer: dict, name: str = "SingleRoIExtractor") -> tuple[str, dict]:
    """``(type, arguments)`` of an mmdet ``roi_layer`` config such as ``dict(type="RoIAlign",
    output_size=7, sampling_ratio=0)``: the layer built as mmdet builds it (``roiops.mmcv``'s,
    with mmcv's defaults and checks), its arguments read back."""
    config = {MMCV_ALIASES.get(key, key): value for key, value in roi_layer.items()}
    kind = config.pop("type", None)
    if kind not in MMCV_LAYERS:
        raise ValueError(f"{name}: roi_layer type must be one of {MMCV_LAYERS}, got {kind!r}")
    layer_class = getattr(mmcv, kind)
    takes = set(inspect.signature(layer_class).parameters) - {"spatial_scale"}
    for key in config:
        if key not in takes:
            raise TypeError(f"{name}: {kind} takes no argument {key!r}")
    needs = ("output_size", "output_channels") if kind in DEFORMABLE_LAYERS else ("output_size",)
    for key in needs:
        if config.get(key) is None:
            raise TypeError(f"{name}: {kind} needs an {key}")
    layer = layer_class(spatial_scale=1.0, **config)
    return kind, {key: getattr(layer, key) for key in MMCV_ARGUMENTS if hasattr(layer, key)}


def level_layers(layer_type: str, layer_args: dict, featmap_strides: list[int]
                 ) -> nn.ModuleList | None:  # fmt: skip
    """mmdet's ``roi_layers`` where they hold parameters (the deformable layers: one per
    level, each with its own offset head, named as mmdet names them, so its checkpoints
    load); ``None`` for the others, which roiops pools with its ops directly."""
    if layer_type not in DEFORMABLE_LAYERS:
        return None
    layer_class = getattr(mmcv, layer_type)
    return nn.ModuleList(layer_class(spatial_scale=1 / s, **layer_args) for s in featmap_strides)


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
        self.roi_layers = level_layers(self.layer_type, self.layer_args, self.featmap_strides)

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


SINGLE = "SingleRoIExtractor"
GENERIC = "GenericRoIExtractor"


def checked_rois(feats: list[Tensor], rois: Tensor, layer_type: str, featmap_strides: list[int],
                 name: str) -> Tensor:  # fmt: skip
    """An extractor's boxes, after its checks (1 to ``len(featmap_strides)`` levels; a
    ``Tensor[K, 5]``, rotated layers ``Tensor[K, 6]``), in the features' compute dtype."""
    if not feats or len(feats) > len(featmap_strides):
        raise ValueError(
            f"{name}: 1 to {len(featmap_strides)} feature maps (one per stride), got {len(feats)}"
        )
    rotated = layer_type in ROTATED_LAYERS
    columns = 6 if rotated else 5
    if not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != columns:
        fields = "cx, cy, w, h, angle" if rotated else "x1, y1, x2, y2"
        got = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois).__name__
        raise ValueError(
            f"{name}: rois must be a Tensor[K, {columns}] (batch_index, {fields}), got {got}"
        )
    # mmdet: rois.type_as(feats[0]), the features float32 already where they were half
    # (its force_fp32): the boxes in the features' compute dtype (others: the op's error)
    dtype = COMPUTE_DTYPES.get(feats[0].dtype) if isinstance(feats[0], Tensor) else None
    return rois.to(dtype) if dtype is not None else rois


def layer_conventions(layer_type: str, layer_args: dict) -> tuple:
    """``(output_size, sampling_ratio, aligned, angle)`` of the pooling that mmcv's layer
    does (``angle``: the rotated ops' angle keywords, mmcv's radians)."""
    # (the rotation-invariant layer: mmcv's legacy rotated convention, not aligned)
    aligned = layer_type != "RiRoIAlignRotated" and layer_args.get("aligned", True)
    angle = dict(angle_unit="radians", clockwise=layer_args.get("clockwise", False))
    return layer_args["output_size"], layer_args.get("sampling_ratio", 0), aligned, angle


def pool_level(feat: Tensor, rois: Tensor, layer_type: str, layer_args: dict,
               spatial_scale: float) -> Tensor:  # fmt: skip
    """Every RoI pooled from one level as mmcv's layer ``layer_type`` (not a deformable
    one: those are modules) pools it, with roiops' op."""
    size, ratio, aligned, angle = layer_conventions(layer_type, layer_args)
    if layer_type == "RoIPool":
        return roi_pool(feat, rois, size, spatial_scale)
    if layer_type == "RiRoIAlignRotated":
        return riroi_align_rotated(feat, rois, size, spatial_scale, ratio,
                                   layer_args["num_orientations"], angle["clockwise"])  # fmt: skip
    if layer_type == "RoIAlignRotated":
        return roi_align_rotated(feat, rois, size, spatial_scale, ratio, aligned, **angle)
    return roi_align(feat, rois, size, spatial_scale, ratio, aligned, layer_args["pool_mode"])


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
    rois = checked_rois(feats, rois, layer_type, featmap_strides, SINGLE)
    channels = feats[0].shape[1] if isinstance(feats[0], Tensor) and feats[0].dim() == 4 else None
    if channels is not None and channels != out_channels:
        raise ValueError(
            f"{SINGLE}: out_channels is {out_channels} but the feature maps have {channels} "
            f"channels"
        )
    rotated = layer_type in ROTATED_LAYERS
    invariant = layer_type == "RiRoIAlignRotated"
    if invariant and channels is not None:
        check_orientations(layer_args["num_orientations"], channels, SINGLE)
    if roi_layers is not None:
        return _pool_mmdet_levels(feats, rois, roi_scale_factor, roi_layers, out_channels,
                                  finest_scale)  # fmt: skip
    scales = [1.0 / s for s in featmap_strides[: len(feats)]]
    if len(feats) == 1:  # (mmdet pools one level directly: roi_scale_factor unused)
        return pool_level(feats[0], rois, layer_type, layer_args, scales[0])
    if layer_args.get("pool_mode") == "max":
        raise NotImplementedError(
            f"{SINGLE}: pool_mode='max' over several levels: roiops' pyramid poolers average "
            f"(pass one level, or use pool_mode='avg')"
        )
    size, ratio, aligned, angle = layer_conventions(layer_type, layer_args)
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


def _rescaled(rois: Tensor, roi_scale_factor: float | tuple | None, rotated: bool,
              name: str = SINGLE) -> Tensor:  # fmt: skip
    """The boxes rescaled by mmdet's ``roi_rescale`` (as they are without a factor)."""
    if roi_scale_factor is None:
        return rois
    factor_ok = isinstance(roi_scale_factor, (int, float)) or (
        rotated and isinstance(roi_scale_factor, tuple) and len(roi_scale_factor) == 2)  # fmt: skip
    if not factor_ok:
        raise TypeError(
            f"{name}: roi_scale_factor must be a number{' or (h, w)' * rotated}, "
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
