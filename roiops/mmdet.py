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
    simple_roi_align,
)
from roiops.ops import call
from roiops.ops.riroi_align_rotated import turn_orientations_op

# mmcv's RoI layers that mmdet's extractors build (``roi_layer["type"]``), mmcv's older
# argument names, the attributes mmcv's ReDet layer keeps two of them under, and what of
# a built layer the pooling takes
# mmdet's deformable RoI pooling layers (configs/dcn's dpool and mdpool): learned
# parameters, one set per level
DEFORMABLE_LAYERS = ("DeformRoIPoolPack", "ModulatedDeformRoIPoolPack")
# the rotated ones (mmrotate's RotatedSingleRoIExtractor; ReDet's rotation-invariant one)
ROTATED_LAYERS = ("RoIAlignRotated", "RiRoIAlignRotated")
# (PointRend's: one zero-padded sample a bin, no pyramid kernel)
MMCV_LAYERS = ("RoIAlign", "RoIPool", "SimpleRoIAlign", *ROTATED_LAYERS, *DEFORMABLE_LAYERS)
MMCV_ALIASES = {"out_size": "output_size", "sample_num": "sampling_ratio"}
MMCV_LAYER_ALIASES = {"output_size": "out_size", "sampling_ratio": "num_samples"}
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
    return kind, layer_arguments(layer_class(spatial_scale=1.0, **config))


def layer_arguments(layer: nn.Module) -> dict:
    """What the pooling takes of a built mmcv layer (``roiops.mmcv``'s or mmcv's own, whose
    ``RiRoIAlignRotated`` keeps ``out_size`` and ``num_samples``), by roiops' names;
    ``RoIAlign(use_torchvision=True)`` averages, as in mmcv."""
    args = {}
    for key in MMCV_ARGUMENTS:
        name = key if hasattr(layer, key) else MMCV_LAYER_ALIASES.get(key)
        if name is not None and hasattr(layer, name):
            args[key] = getattr(layer, name)
    if getattr(layer, "use_torchvision", False) and "pool_mode" in args:
        args["pool_mode"] = "avg"
    return args


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
    :func:`roiops.riroi_align_rotated`), PointRend's ``dict(type="SimpleRoIAlign",
    output_size=14)`` (over several levels in mmdet's loop: a ``nonzero`` per level), or a
    deformable one,
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
    if layer_type == "SimpleRoIAlign":
        return simple_roi_align(feat, rois, size, spatial_scale, aligned)
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
    if layer_type == "SimpleRoIAlign":  # (no pyramid kernel: mmdet's loop over the levels)
        layers = [lambda f, r, s=s: pool_level(f, r, layer_type, layer_args, s) for s in scales]
        return _pool_mmdet_levels(feats, rois, roi_scale_factor, layers, out_channels,
                                  finest_scale)  # fmt: skip
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


class GenericRoIExtractor(nn.Module):
    """mmdet's ``GenericRoIExtractor`` (GRoIE: Rossi et al., "A novel Region of Interest
    Extraction Layer for Instance Segmentation", ICPR 2020): every RoI pooled from every
    level, not from one, and the levels aggregated: ``"sum"`` (each level's pooled features,
    after ``pre_cfg``'s module where there is one, added in level order) or ``"concat"``
    (stacked along the channels, level 0 first, so ``out_channels`` is their total; mmdet
    sizes each level's slot by its channels before the ``pre`` module, which must keep them
    there); then ``post_cfg``'s module. mmdet's constructor:
    ``GenericRoIExtractor(aggregation="sum", pre_cfg=None, post_cfg=None, roi_layer=...,
    out_channels=..., featmap_strides=...)``, the last three as for
    :class:`SingleRoIExtractor` (its layers, deformable ones included), and mmdet's numbers:
    with one level, the layer's output as it is (no ``pre``/``post`` module, no rescaling,
    as mmdet); no RoIs: zeros ``[0, out_channels, *output_size]``.

    ``pre_cfg`` / ``post_cfg``: an ``nn.Module`` (roiops), or mmdet's config of an mmcv
    plugin (``dict(type="ConvModule", in_channels=256, out_channels=256, kernel_size=5,
    padding=2, inplace=False)``, ``dict(type="GeneralizedAttention", ...)``), which needs
    mmcv installed (its ``build_plugin_layer`` builds it). They are ``pre_module`` and
    ``post_module``, mmdet's names, so its checkpoints load. One ``pre_module`` serves
    every level (mmdet's), called on each level's features in turn.

    ``forward(feats, rois, roi_scale_factor=None)``: as ``SingleRoIExtractor``'s. Each
    level's pooling is one launch, with no host synchronisation on CUDA (mmdet's too).
    Half-precision levels are added in their own dtype, as mmdet 3 adds them (under
    autocast too).
    """

    def __init__(
        self,
        aggregation: str = "sum",
        pre_cfg: dict | nn.Module | None = None,
        post_cfg: dict | nn.Module | None = None,
        *,
        roi_layer: dict,
        out_channels: int,
        featmap_strides: list[int],
        init_cfg: object = None,
    ) -> None:
        super().__init__()
        if aggregation not in ("sum", "concat"):
            raise ValueError(
                f"{GENERIC}: aggregation must be 'sum' or 'concat', got {aggregation!r}"
            )
        self.aggregation = aggregation
        self.layer_type, self.layer_args = mmcv_layer(roi_layer, GENERIC)
        self.out_channels = int(out_channels)
        self.featmap_strides = list(featmap_strides)
        self.roi_layers = level_layers(self.layer_type, self.layer_args, self.featmap_strides)
        self.with_post = post_cfg is not None
        self.with_pre = pre_cfg is not None
        # (mmdet builds the post module first: the same parameters from the same seed)
        if self.with_post:
            self.post_module = plugin_layer(post_cfg, "_post_module", "post_cfg")
        if self.with_pre:
            self.pre_module = plugin_layer(pre_cfg, "_pre_module", "pre_cfg")

    @property
    def num_inputs(self) -> int:
        return len(self.featmap_strides)

    def roi_rescale(self, rois: Tensor, scale_factor: float | tuple) -> Tensor:
        """The boxes scaled by ``scale_factor`` about their centres (mmdet's arithmetic)."""
        return mmdet_rescale(rois, scale_factor, self.layer_type in ROTATED_LAYERS)

    def forward(
        self, feats: list[Tensor], rois: Tensor, roi_scale_factor: float | tuple | None = None
    ) -> Tensor:
        feats = list(feats)
        pooled = pool_every_level(
            feats, rois, roi_scale_factor, self.layer_type, self.layer_args,
            self.featmap_strides, self.roi_layers,
        )  # fmt: skip
        pooled = [pooled[i] for i in range(len(feats))]  # (a Proxy under torch.fx)
        if len(feats) == 1:
            return pooled[0]
        if isinstance(rois, Tensor) and rois.shape[0] == 0:
            size = pooled[0].shape[2:]
            return pooled[0].new_zeros((0, self.out_channels, *size))
        if self.with_pre:
            pooled = [self.pre_module(level) for level in pooled]
        out = aggregate_levels(pooled, self.aggregation, self.out_channels)
        return self.post_module(out) if self.with_post else out

    def extra_repr(self) -> str:
        return (
            f"aggregation={self.aggregation!r}, roi_layer={self.layer_type}({self.layer_args}), "
            f"out_channels={self.out_channels}, featmap_strides={self.featmap_strides}"
        )


def plugin_layer(cfg: dict | nn.Module, postfix: str, argument: str) -> nn.Module:
    """``GenericRoIExtractor``'s pre/post module: the module itself, or built from mmdet's
    config by mmcv's ``build_plugin_layer`` (mmcv's registry of ConvModule,
    GeneralizedAttention, NonLocal2d, ...: needs mmcv)."""
    if isinstance(cfg, nn.Module):
        return cfg
    if not isinstance(cfg, dict):
        raise TypeError(
            f"{GENERIC}: {argument} must be an nn.Module or an mmcv plugin config (a dict), "
            f"got {type(cfg).__name__}"
        )
    try:
        from mmcv.cnn import build_plugin_layer
    except ImportError as error:
        raise ImportError(
            f"{GENERIC}: {argument}={cfg!r} is a config of mmcv's plugin registry, which needs "
            f"mmcv (pip install mmcv-lite); or pass the module itself (an nn.Module)"
        ) from error
    return build_plugin_layer(cfg, postfix)[1]


@fx_leaf
def pool_every_level(
    feats: list[Tensor],
    rois: Tensor,
    roi_scale_factor: float | tuple | None,
    layer_type: str,
    layer_args: dict,
    featmap_strides: list[int],
    roi_layers: nn.ModuleList | None = None,
) -> tuple[Tensor, ...]:
    """``GenericRoIExtractor``'s pooling as a function (one leaf node under ``torch.fx``):
    every RoI pooled from each level, a ``Tensor[K, C, PH, PW]`` a level (one level: the
    layer's output, the boxes not rescaled)."""
    rois = checked_rois(feats, rois, layer_type, featmap_strides, GENERIC)
    scales = [1.0 / s for s in featmap_strides[: len(feats)]]
    if len(feats) > 1:
        rois = _rescaled(rois, roi_scale_factor, layer_type in ROTATED_LAYERS, GENERIC)
    if roi_layers is not None:
        layers = roi_layers[: len(feats)]
        return tuple(layer(f, rois) for f, layer in zip(feats, layers, strict=True))
    return tuple(
        pool_level(f, rois, layer_type, layer_args, s) for f, s in zip(feats, scales, strict=True)
    )


def aggregate_levels(pooled: list[Tensor], aggregation: str, out_channels: int) -> Tensor:
    """The levels' pooled features added in level order (mmdet's ``roi_feats +
    roi_feats_t``, from zeros) or stacked along the channels, checked against
    ``out_channels`` where the shapes are known."""
    channels = [p.shape[1] for p in pooled if isinstance(p, Tensor)]
    if aggregation == "sum":
        if any(c != out_channels for c in channels):
            raise ValueError(
                f"{GENERIC}: aggregation='sum' adds levels of out_channels={out_channels} "
                f"channels, got levels of {channels} channels"
            )
        out = pooled[0]
        for level in pooled[1:]:
            out = out + level
        return out
    if len(channels) == len(pooled) and sum(channels) != out_channels:
        raise ValueError(
            f"{GENERIC}: aggregation='concat' stacks the levels' channels ({channels}) into "
            f"out_channels={out_channels}, but they add up to {sum(channels)}"
        )
    return torch.cat(pooled, 1)
