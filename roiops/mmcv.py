"""mmcv.ops' RoI layers with mmcv's signatures and defaults, on roiops' kernels.

Swap ``from mmcv.ops import RoIAlign`` for ``from roiops.mmcv import RoIAlign`` (likewise
``RoIPool``, ``RoIAlignRotated`` and the functions ``roi_align``, ``roi_pool``,
``roi_align_rotated``): the same constructor arguments, mmcv's old names ``out_size`` and
``sample_num`` included, and mmcv's defaults, which are not roiops' (torchvision's): RoIAlign
adaptive (``sampling_ratio=0``) and ``aligned=True``; rotated boxes' angles in radians.
Also ``DeformRoIPool``, ``DeformRoIPoolPack``, ``ModulatedDeformRoIPoolPack`` and
``deform_roi_pool`` (Deformable ConvNets' RoI pooling), ``PrRoIPool`` and
``prroi_pool`` (Precise RoI Pooling), ``RiRoIAlignRotated`` and ``riroi_align_rotated``
(ReDet), and ``BezierAlign`` and ``bezier_align`` (ABCNet), whose defaults roiops
shares.
``pool_mode="max"`` is mmcv's max over the sampling points (roiops' ``mode="max"``; a bin
without a sampling point gives 0, where mmcv's CPU kernel gives -10000). mmdet's RoI
extractors are :class:`roiops.SingleRoIExtractor` and :class:`roiops.GenericRoIExtractor`.
"""

from __future__ import annotations

from torch import Tensor, nn

from roiops import _validate
from roiops import functional as F
from roiops._trace import fx_leaf


def _pick(new: object, old: object, name: str, old_name: str, default: object = None) -> object:
    """An argument given by its name or by mmcv's older name (not both)."""
    if new is not None and old is not None:
        raise TypeError(f"mmcv: {name} and {old_name} (its older name) both given")
    value = new if new is not None else old
    return default if value is None else value


class MmcvLayer(nn.Module):
    """An mmcv layer: printed as ``Name(argument=value, ...)`` for its ``SHOWN`` arguments,
    in mmcv's order."""

    SHOWN: tuple[str, ...] = ()

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)}" for name in self.SHOWN)


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


class RoIAlign(MmcvLayer):
    """mmcv's ``RoIAlign(output_size, spatial_scale=1.0, sampling_ratio=0, pool_mode="avg",
    aligned=True, use_torchvision=False)``. ``use_torchvision=True`` runs torchvision's
    roi_align in mmcv, which has no max: the average whatever ``pool_mode`` says, as
    there (the numbers are torchvision's either way)."""

    SHOWN = (
        "output_size",
        "spatial_scale",
        "sampling_ratio",
        "pool_mode",
        "aligned",
        "use_torchvision",
    )

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
        mode = "avg" if self.use_torchvision else self.pool_mode
        return roi_align(input, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, mode, self.aligned)  # fmt: skip


class RoIPool(MmcvLayer):
    """mmcv's ``RoIPool(output_size, spatial_scale=1.0)``."""

    SHOWN = ("output_size", "spatial_scale")

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)


class RoIAlignRotated(MmcvLayer):
    """mmcv's ``RoIAlignRotated(output_size, spatial_scale, sampling_ratio=0, aligned=True,
    clockwise=False)`` (or its older ``out_size`` and ``sample_num``): angles in radians."""

    SHOWN = ("output_size", "spatial_scale", "sampling_ratio", "aligned", "clockwise")

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


riroi_align_rotated = F.riroi_align_rotated  # (mmcv's signature and defaults already)


class RiRoIAlignRotated(MmcvLayer):
    """mmcv's ``RiRoIAlignRotated(out_size, spatial_scale, num_samples=0,
    num_orientations=8, clockwise=False)`` (ReDet's rotation-invariant RoIAlign, see
    :func:`roiops.riroi_align_rotated`; ``output_size`` and ``sampling_ratio`` are taken
    for mmcv's names, which the layer also keeps): angles in radians."""

    SHOWN = ("out_size", "spatial_scale", "num_samples", "num_orientations", "clockwise")

    def __init__(
        self,
        out_size: int | tuple[int, int] | None = None,
        spatial_scale: float | None = None,
        num_samples: int | None = None,
        num_orientations: int = 8,
        clockwise: bool = False,
        *,
        output_size: int | tuple[int, int] | None = None,
        sampling_ratio: int | None = None,
    ) -> None:
        super().__init__()
        self.out_size = _pick(out_size, output_size, "out_size", "output_size")
        if self.out_size is None:
            raise TypeError("RiRoIAlignRotated: out_size (or output_size) is required")
        if spatial_scale is None:
            raise TypeError("RiRoIAlignRotated: spatial_scale is required")
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)
        self.num_samples = _pick(num_samples, sampling_ratio, "num_samples", "sampling_ratio", 0)
        self.num_orientations = num_orientations
        self.clockwise = clockwise

    # (roiops' names, which mmdet's extractor reads)
    output_size = property(lambda self: self.out_size)
    sampling_ratio = property(lambda self: self.num_samples)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return riroi_align_rotated(input, rois, self.out_size, self.spatial_scale,
                                   self.num_samples, self.num_orientations,
                                   self.clockwise)  # fmt: skip


prroi_pool = F.prroi_pool  # (mmcv's signature already; its gradients reach the boxes)


class PrRoIPool(MmcvLayer):
    """mmcv's ``PrRoIPool(output_size, spatial_scale=1.0)`` (Precise RoI Pooling, see
    :func:`roiops.prroi_pool`; ``roiops.PrRoIPool2D`` is PreciseRoIPooling's own
    signature)."""

    SHOWN = ("output_size", "spatial_scale")

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float = 1.0) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return prroi_pool(input, rois, self.output_size, self.spatial_scale)


bezier_align = F.bezier_align  # (mmcv's signature and defaults already)


class BezierAlign(MmcvLayer):
    """mmcv's ``BezierAlign(output_size, spatial_scale, sampling_ratio, aligned=True)``
    (AdelaiDet's, ABCNet's), see :func:`roiops.bezier_align`."""

    SHOWN = ("output_size", "spatial_scale", "sampling_ratio", "aligned")

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float,
                 sampling_ratio: int, aligned: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, beziers: Tensor) -> Tensor:
        return bezier_align(input, beziers, self.output_size, self.spatial_scale,
                            self.sampling_ratio, self.aligned)  # fmt: skip


simple_roi_align = F.simple_roi_align


class SimpleRoIAlign(MmcvLayer):
    """mmcv's ``SimpleRoIAlign(output_size, spatial_scale, aligned=True)`` (PointRend's:
    mmdet's PointRend mask RoI layer), see :func:`roiops.simple_roi_align`."""

    SHOWN = ("output_size", "spatial_scale", "aligned")

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float,
                 aligned: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)
        self.aligned = aligned

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        return simple_roi_align(features, rois, self.output_size, self.spatial_scale,
                                self.aligned)  # fmt: skip


deform_roi_pool = F.deform_roi_pool  # (mmcv's signature and defaults already)


class DeformRoIPool(MmcvLayer):
    """mmcv's ``DeformRoIPool(output_size, spatial_scale=1.0, sampling_ratio=0,
    gamma=0.1)``; ``forward(input, rois, offset=None)``, see
    :func:`roiops.deform_roi_pool`."""

    SHOWN = ("output_size", "spatial_scale", "sampling_ratio", "gamma")

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale  # (checked by the op, as every argument)
        self.sampling_ratio = sampling_ratio
        self.gamma = gamma

    def forward(self, input: Tensor, rois: Tensor, offset: Tensor | None = None) -> Tensor:
        return deform_roi_pool(input, rois, offset, self.output_size, self.spatial_scale,
                               self.sampling_ratio, self.gamma)  # fmt: skip


def offset_head(pooled: tuple[int, int], channels: int, hidden: int, outputs: int,
                 layers: int) -> nn.Sequential:  # fmt: skip
    """mmcv's fully connected head from a RoI's pooled features to ``outputs`` values per
    bin: ``layers`` Linear layers with ReLU between, the last one zeroed (a deformable
    pooling starts as the plain one)."""
    sizes = [pooled[0] * pooled[1] * channels] + [hidden] * (layers - 1)
    modules: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        modules += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    modules.append(nn.Linear(sizes[-1], pooled[0] * pooled[1] * outputs))
    nn.init.zeros_(modules[-1].weight)
    nn.init.zeros_(modules[-1].bias)
    return nn.Sequential(*modules)


@fx_leaf
def pack_features(input: Tensor, rois: Tensor, channels: int, pooled: tuple[int, int],
                  spatial_scale: float, sampling_ratio: int, layer: str) -> Tensor:  # fmt: skip
    """``Tensor[K, C * PH * PW]``: the plain (undeformed) pooling a Pack's fully connected
    heads read, once the input has the ``channels`` the ``layer`` was built for (a leaf
    of torch.fx traces: the check reads a shape)."""
    if input.shape[1] != channels:
        raise ValueError(
            f"{layer}: input has {input.shape[1]} channels, the layer was built for "
            f"output_channels={channels}"
        )
    return deform_roi_pool(input, rois, None, pooled, spatial_scale, sampling_ratio).flatten(1)


def _pack_pooling(layer: nn.Module, input: Tensor, rois: Tensor) -> tuple:
    """``(pooled (h, w), the plain pooling's features [K, C * h * w], the offsets [K, 2,
    h, w])`` of a Pack ``layer``, read from the attributes mmcv's Packs have too
    (``output_size``, ``output_channels``, ``spatial_scale``, ``sampling_ratio``,
    ``offset_fc``): ``roiops.patch()`` gives mmcv's classes these forwards."""
    name = type(layer).__name__
    pooled = _validate.output_size_pair(layer.output_size, name)
    x = pack_features(input, rois, layer.output_channels, pooled, layer.spatial_scale,
                      layer.sampling_ratio, name)  # fmt: skip
    return pooled, x, layer.offset_fc(x).view(x.shape[0], 2, *pooled)


class DeformRoIPoolPack(DeformRoIPool):
    """mmcv's ``DeformRoIPoolPack(output_size, output_channels, deform_fc_channels=1024,
    spatial_scale=1.0, sampling_ratio=0, gamma=0.1)`` (Deformable ConvNets' deformable
    RoI pooling): a plain pooling, three fully connected layers (``offset_fc``, the last
    zeroed) from its features to the bins' offsets, then the deformable pooling. Its
    parameters have mmcv's names: mmcv's checkpoints load."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        output_channels: int,
        deform_fc_channels: int = 1024,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, gamma)
        pooled = _validate.output_size_pair(output_size, type(self).__name__)
        self.output_channels = output_channels
        self.deform_fc_channels = deform_fc_channels
        self.offset_fc = offset_head(pooled, output_channels, deform_fc_channels, 2, 3)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        pooled, _, offset = _pack_pooling(self, input, rois)
        return deform_roi_pool(input, rois, offset, pooled, self.spatial_scale,
                               self.sampling_ratio, self.gamma)  # fmt: skip


class ModulatedDeformRoIPoolPack(DeformRoIPoolPack):
    """mmcv's ``ModulatedDeformRoIPoolPack`` (Deformable ConvNets v2's modulated
    deformable RoI pooling): :class:`DeformRoIPoolPack` whose bins are also weighted by a
    learned mask in (0, 1) (``mask_fc``: two fully connected layers, the last zeroed,
    and a sigmoid: 0.5 everywhere at first)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        output_channels: int,
        deform_fc_channels: int = 1024,
        spatial_scale: float = 1.0,
        sampling_ratio: int = 0,
        gamma: float = 0.1,
    ) -> None:
        super().__init__(output_size, output_channels, deform_fc_channels, spatial_scale,
                         sampling_ratio, gamma)  # fmt: skip
        pooled = _validate.output_size_pair(output_size, type(self).__name__)
        self.mask_fc = nn.Sequential(
            *offset_head(pooled, output_channels, deform_fc_channels, 1, 2), nn.Sigmoid()
        )

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        pooled, x, offset = _pack_pooling(self, input, rois)
        mask = self.mask_fc(x).view(x.shape[0], 1, *pooled)
        d = deform_roi_pool(input, rois, offset, pooled, self.spatial_scale,
                            self.sampling_ratio, self.gamma)  # fmt: skip
        return d * mask
