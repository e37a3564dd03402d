"""Deformable ConvNets' own RoI pooling layers, with the signatures of the codebases that
ship its original kernel, on :func:`roiops.deform_ps_roi_pool`.

- mmdetection 1.x (``mmdet.ops.dcn``): ``DeformRoIPooling``, ``DeformRoIPoolingPack``
  and ``ModulatedDeformRoIPoolingPack``, and the function ``deform_roi_pooling``;
- Charles Shang's DCNv2 (``dcn_v2``): ``DCNv2Pooling`` and ``DCNPooling``, and the
  function ``dcn_v2_pooling``.

Their parameters have those names, so their checkpoints load. mmcv 2's
``DeformRoIPool`` (RoIAlign's grid, moved; other numbers) is :mod:`roiops.mmcv`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from roiops import functional as F
from roiops._trace import fx_leaf
from roiops.mmcv import offset_head


def deform_roi_pooling(data: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
                       out_size: int, out_channels: int, no_trans: bool, group_size: int = 1,
                       part_size: int | None = None, sample_per_part: int = 4,
                       trans_std: float = 0.0) -> Tensor:  # fmt: skip
    """mmdetection 1.x's ``deform_roi_pooling`` (and DCNv2's ``dcn_v2_pooling``, the same
    arguments): :func:`roiops.deform_ps_roi_pool` with ``out_channels`` checked against
    the input's channels (``out_channels * group_size**2``); ``no_trans``: no offsets."""
    return _checked_pooling(data, rois, None if no_trans else offset, spatial_scale, out_size,
                            out_channels, group_size, part_size, sample_per_part, trans_std,
                            "deform_roi_pooling")  # fmt: skip


dcn_v2_pooling = deform_roi_pooling


def _checked_pooling(data: Tensor, rois: Tensor, offset: Tensor | None, spatial_scale: float,
                     out_size: int, out_channels: int, group_size: int, part_size: int | None,
                     sample_per_part: int, trans_std: float, layer: str) -> Tensor:  # fmt: skip
    """:func:`roiops.deform_ps_roi_pool`, once the input has the channels the ``layer`` was
    built for (the originals read past them or assert)."""
    if isinstance(data, Tensor) and data.dim() == 4:
        expected = out_channels * group_size * group_size
        if data.shape[1] != expected:
            raise ValueError(
                f"{layer}: input has {data.shape[1]} channels, the layer was built for "
                f"out_channels={out_channels} x group_size**2={group_size * group_size}"
            )
    return F.deform_ps_roi_pool(data, rois, offset, out_size, spatial_scale, group_size,
                                part_size, sample_per_part, trans_std)  # fmt: skip


@fx_leaf
def _plain_pooling(data: Tensor, rois: Tensor, out_channels: int, group_size: int,
                   out_size: int, spatial_scale: float, part_size: int, sample_per_part: int,
                   layer: str) -> Tensor:  # fmt: skip
    """``Tensor[K, C * out_size**2]``: the pooling without offsets that a Pack's fully
    connected heads read (a leaf of torch.fx traces: the check reads a shape)."""
    return _checked_pooling(data, rois, None, spatial_scale, out_size, out_channels, group_size,
                            part_size, sample_per_part, 0.0, layer).flatten(1)  # fmt: skip


class DeformRoIPooling(nn.Module):
    """mmdetection 1.x's ``DeformRoIPooling(spatial_scale, out_size, out_channels,
    no_trans, group_size=1, part_size=None, sample_per_part=4, trans_std=0.0)``;
    ``forward(data, rois, offset=None)``, see :func:`roiops.deform_ps_roi_pool`."""

    def __init__(self, spatial_scale: float, out_size: int, out_channels: int, no_trans: bool,
                 group_size: int = 1, part_size: int | None = None, sample_per_part: int = 4,
                 trans_std: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.spatial_scale = spatial_scale
        self.out_size = out_size
        self.out_channels = out_channels
        self.no_trans = no_trans
        self.group_size = group_size
        self.part_size = out_size if part_size is None else part_size
        self.sample_per_part = sample_per_part
        self.trans_std = trans_std

    def pool(self, data: Tensor, rois: Tensor, offset: Tensor | None) -> Tensor:
        """The layer's pooling with these offsets (None: none)."""
        return _checked_pooling(data, rois, offset, self.spatial_scale, self.out_size,
                                self.out_channels, self.group_size, self.part_size,
                                self.sample_per_part, self.trans_std,
                                type(self).__name__)  # fmt: skip

    def plain_features(self, data: Tensor, rois: Tensor) -> Tensor:
        """``Tensor[K, C * out_size**2]``: the pooling without offsets, flattened (what a
        Pack's fully connected heads read)."""
        return _plain_pooling(data, rois, self.out_channels, self.group_size, self.out_size,
                              self.spatial_scale, self.part_size, self.sample_per_part,
                              type(self).__name__)  # fmt: skip

    def forward(self, data: Tensor, rois: Tensor, offset: Tensor | None = None) -> Tensor:
        return self.pool(data, rois, None if self.no_trans else offset)

    def extra_repr(self) -> str:
        return (f"spatial_scale={self.spatial_scale}, out_size={self.out_size}, "
                f"out_channels={self.out_channels}, no_trans={self.no_trans}, "
                f"group_size={self.group_size}, part_size={self.part_size}, "
                f"sample_per_part={self.sample_per_part}, trans_std={self.trans_std}")  # fmt: skip


class DeformRoIPoolingPack(DeformRoIPooling):
    """mmdetection 1.x's ``DeformRoIPoolingPack(..., num_offset_fcs=3,
    deform_fc_channels=1024)``: the pooling without offsets, ``offset_fc`` (fully
    connected layers, the last zeroed) from its features to each bin's offset, then the
    deformable pooling; ``forward(data, rois)``. Without offsets (``no_trans``) it is
    the plain pooling and has no layers."""

    def __init__(self, spatial_scale: float, out_size: int, out_channels: int, no_trans: bool,
                 group_size: int = 1, part_size: int | None = None, sample_per_part: int = 4,
                 trans_std: float = 0.0, num_offset_fcs: int = 3,
                 deform_fc_channels: int = 1024) -> None:  # fmt: skip
        super().__init__(spatial_scale, out_size, out_channels, no_trans, group_size,
                         part_size, sample_per_part, trans_std)  # fmt: skip
        self.num_offset_fcs = num_offset_fcs
        self.deform_fc_channels = deform_fc_channels
        self.pooled = (out_size, out_size)
        if not no_trans:
            self.offset_fc = offset_head(self.pooled, out_channels, deform_fc_channels, 2,
                                         num_offset_fcs)  # fmt: skip

    def forward(self, data: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        if self.no_trans:
            return self.pool(data, rois, None)
        x = self.plain_features(data, rois)
        offset = self.offset_fc(x).view(x.shape[0], 2, *self.pooled)
        return self.pool(data, rois, offset)


class ModulatedDeformRoIPoolingPack(DeformRoIPoolingPack):
    """mmdetection 1.x's ``ModulatedDeformRoIPoolingPack(..., num_offset_fcs=3,
    num_mask_fcs=2, deform_fc_channels=1024)`` (Deformable ConvNets v2):
    :class:`DeformRoIPoolingPack` whose bins are also weighted by a learned mask in (0, 1)
    (``mask_fc``: fully connected layers, the last zeroed, and a sigmoid)."""

    def __init__(self, spatial_scale: float, out_size: int, out_channels: int, no_trans: bool,
                 group_size: int = 1, part_size: int | None = None, sample_per_part: int = 4,
                 trans_std: float = 0.0, num_offset_fcs: int = 3, num_mask_fcs: int = 2,
                 deform_fc_channels: int = 1024) -> None:  # fmt: skip
        super().__init__(spatial_scale, out_size, out_channels, no_trans, group_size,
                         part_size, sample_per_part, trans_std, num_offset_fcs,
                         deform_fc_channels)  # fmt: skip
        self.num_mask_fcs = num_mask_fcs
        if not no_trans:
            self.mask_fc = nn.Sequential(
                *offset_head(self.pooled, out_channels, deform_fc_channels, 1, num_mask_fcs),
                nn.Sigmoid(),
            )

    def forward(self, data: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        if self.no_trans:
            return self.pool(data, rois, None)
        x = self.plain_features(data, rois)
        offset = self.offset_fc(x).view(x.shape[0], 2, *self.pooled)
        mask = self.mask_fc(x).view(x.shape[0], 1, *self.pooled)
        return self.pool(data, rois, offset) * mask


class DCNv2Pooling(DeformRoIPooling):
    """DCNv2's ``DCNv2Pooling(spatial_scale, pooled_size, output_dim, no_trans,
    group_size=1, part_size=None, sample_per_part=4, trans_std=0.0)``; ``forward(input,
    rois, offset)``, see :func:`roiops.deform_ps_roi_pool`."""

    def __init__(self, spatial_scale: float, pooled_size: int, output_dim: int, no_trans: bool,
                 group_size: int = 1, part_size: int | None = None, sample_per_part: int = 4,
                 trans_std: float = 0.0) -> None:  # fmt: skip
        super().__init__(spatial_scale, pooled_size, output_dim, no_trans, group_size,
                         part_size, sample_per_part, trans_std)  # fmt: skip

    @property
    def pooled_size(self) -> int:
        return self.out_size

    @property
    def output_dim(self) -> int:
        return self.out_channels


class DCNPooling(DCNv2Pooling):
    """DCNv2's ``DCNPooling(..., deform_fc_dim=1024)``: the pooling without offsets,
    ``offset_mask_fc`` (three fully connected layers, the last zeroed) from its features
    to each bin's offset and mask (a sigmoid), then the deformable pooling times the mask;
    ``forward(input, rois)``."""

    def __init__(self, spatial_scale: float, pooled_size: int, output_dim: int, no_trans: bool,
                 group_size: int = 1, part_size: int | None = None, sample_per_part: int = 4,
                 trans_std: float = 0.0, deform_fc_dim: int = 1024) -> None:  # fmt: skip
        super().__init__(spatial_scale, pooled_size, output_dim, no_trans, group_size,
                         part_size, sample_per_part, trans_std)  # fmt: skip
        self.deform_fc_dim = deform_fc_dim
        self.pooled = (pooled_size, pooled_size)
        if not no_trans:
            self.offset_mask_fc = offset_head(self.pooled, output_dim, deform_fc_dim, 3, 3)

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:  # type: ignore[override]
        if self.no_trans:
            return self.pool(input, rois, None)
        x = self.plain_features(input, rois)
        offset_mask = self.offset_mask_fc(x).view(x.shape[0], 3, *self.pooled)
        offset, mask = offset_mask[:, :2], torch.sigmoid(offset_mask[:, 2:])
        return self.pool(input, rois, offset) * mask
