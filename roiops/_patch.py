"""``roiops.patch()``: the RoI ops and layers of torchvision, detectron2 and mmcv run on
roiops, in whichever of these libraries is installed (and mmdet's RoI extractor).

* torchvision: the functions ``roi_align``, ``roi_pool``, ``ps_roi_align`` and
  ``ps_roi_pool`` wherever a module holds them (torchvision's own modules, e.g.
  ``torchvision.ops.poolers``, which ``MultiScaleRoIAlign`` calls; detectron2's
  ``detectron2.layers.roi_align``, which its ``ROIAlign`` calls; any module that did
  ``from torchvision.ops import roi_align``) become functions with torchvision's
  signatures that call roiops (mmcv's ``RoIAlign(use_torchvision=True)`` reads
  ``roi_align.__code__.co_varnames`` to see whether it takes ``aligned``), and the
  ``forward`` of ``RoIAlign``, ``RoIPool``, ``PSRoIAlign``, ``PSRoIPool`` and
  ``MultiScaleRoIAlign`` calls roiops, so models built before the patch switch too.
* detectron2: ``ROIAlign`` (through torchvision's function, above), and the ``forward``
  of ``ROIAlignRotated`` and of ``ROIPooler`` (every level in one launch; a pooler whose
  level poolers are not detectron2's ``ROIAlign`` / ``ROIAlignRotated`` or torchvision's
  ``RoIPool`` keeps detectron2's loop).
* mmcv: ``mmcv.ops``' functions ``roi_align``, ``roi_pool``, ``roi_align_rotated``,
  ``riroi_align_rotated``, ``prroi_pool``, ``bezier_align`` and ``deform_roi_pool``
  wherever a module holds them, and the ``forward`` of its layers ``RoIAlign``,
  ``RoIPool``, ``RoIAlignRotated``, ``RiRoIAlignRotated``, ``PrRoIPool``,
  ``BezierAlign``, ``SimpleRoIAlign``, ``DeformRoIPool``, ``DeformRoIPoolPack`` and
  ``ModulatedDeformRoIPoolPack``: :mod:`roiops.mmcv`'s, which read the attributes mmcv's
  layers set.
* mmdet and mmrotate: the ``forward`` of mmdet's ``SingleRoIExtractor`` and of
  mmrotate's ``RotatedSingleRoIExtractor`` (every level in one launch with no host
  synchronisation, where they loop with a ``nonzero`` per level; deformable layers level
  by level, as mmdet; max pooling over several levels, layers roiops does not know and
  layers of the other kind of boxes keep their loop, over the patched layers). Their boxes
  stay in the features' compute dtype, as in mmdet 2 (``force_fp32``): mmdet 3 casts
  them to the features' dtype (float16 under AMP) and maps their levels there, where an
  area over 65504 px² overflows to the coarsest level.

An unmodified detection model then pools with roiops: the numbers of the op each call
replaced (see each op), deterministic backward, the Triton kernels on CUDA.
``unpatch()`` restores everything (roiops' own modules are left as they are).

Differences a patched model can meet: roiops accepts boxes of another floating dtype
than the features (torchvision requires the same); bad arguments raise roiops' errors
(ValueError, TypeError) where the libraries assert; and its functions are Python, so a
patched model cannot be ``torch.jit.script``-ed (use ``torch.compile`` or
``torch.export``).
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable

import roiops
from roiops import mmcv as roiops_mmcv
from roiops import mmdet as roiops_mmdet
from roiops import nn as roiops_nn

_lock = threading.Lock()
# (owner, attribute name, original value) of everything patch() replaced, in order;
# _INHERITED: the owner (a class) had none of its own
_replaced: list[tuple[object, str, object]] = []
_INHERITED = object()


# torchvision's functions, with torchvision's signatures (what its callers may inspect)
def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    return roiops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    return roiops.roi_pool(input, boxes, output_size, spatial_scale)


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    return roiops.ps_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio)


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    return roiops.ps_roi_pool(input, boxes, output_size, spatial_scale)


def _roi_align_forward(self, input, rois):
    return roiops.roi_align(
        input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
    )


def _roi_pool_forward(self, input, rois):
    return roiops.roi_pool(input, rois, self.output_size, self.spatial_scale)


def _ps_roi_align_forward(self, input, rois):
    return roiops.ps_roi_align(
        input, rois, self.output_size, self.spatial_scale, self.sampling_ratio
    )


def _ps_roi_pool_forward(self, input, rois):
    return roiops.ps_roi_pool(input, rois, self.output_size, self.spatial_scale)


def _multi_scale_forward(self, x, boxes, image_shapes):
    return roiops_nn.pool_pyramid(
        x, boxes, image_shapes, self.featmap_names, self.output_size, self.sampling_ratio,
        False, self.canonical_scale, self.canonical_level,
    )  # fmt: skip


def _detectron2_rotated_forward(self, input, rois):
    # (detectron2's convention: aligned, angles in degrees, counter-clockwise; it computes
    # half precision in float32, as roiops does)
    return roiops.roi_align_rotated(
        input, rois, self.output_size, self.spatial_scale, self.sampling_ratio
    )


def _detectron2_pooler_forward(roi_align_class: type, rotated_class: type, roi_pool_class: type,
                               original: Callable) -> Callable:  # fmt: skip
    """detectron2's ``ROIPooler.forward`` on roiops: its pooler type read from its first
    level pooler (detectron2 keeps no other record of it), every level in one launch."""

    def forward(self, x, box_lists):
        first = self.level_poolers[0]
        if type(first) is roi_align_class:
            pooler_type = "ROIAlignV2" if first.aligned else "ROIAlign"
        elif type(first) is rotated_class:
            pooler_type = "ROIAlignRotated"
        elif type(first) is roi_pool_class:
            pooler_type = "ROIPool"
        else:  # (a pooler of another kind: detectron2's own loop)
            return original(self, x, box_lists)
        scales = [p.spatial_scale for p in self.level_poolers]
        return roiops_nn.pool_detectron2(
            x, box_lists, tuple(self.output_size), scales, getattr(first, "sampling_ratio", 0),
            pooler_type, self.canonical_box_size, self.canonical_level,
        )  # fmt: skip

    return forward


def _import(name: str):
    """Module ``name``, or None where it cannot be imported: not installed, or installed
    with what it refuses (mmdet and mmrotate assert their mmcv's version at import), so
    not in use in this process."""
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _torchvision() -> tuple[dict, dict]:
    """``(functions, forwards)``: torchvision's functions -> the ones replacing them, and
    its module classes -> the roiops ``forward`` that replaces theirs."""
    tv = _import("torchvision.ops")
    if tv is None:
        return {}, {}
    functions = {
        tv.roi_align: roi_align,
        tv.roi_pool: roi_pool,
        tv.ps_roi_align: ps_roi_align,
        tv.ps_roi_pool: ps_roi_pool,
    }
    forwards = {
        tv.RoIAlign: _roi_align_forward,
        tv.RoIPool: _roi_pool_forward,
        tv.PSRoIAlign: _ps_roi_align_forward,
        tv.PSRoIPool: _ps_roi_pool_forward,
        tv.MultiScaleRoIAlign: _multi_scale_forward,
    }
    return functions, forwards


def _detectron2() -> dict:
    """detectron2's classes -> the roiops ``forward`` that replaces theirs (its
    ``ROIAlign`` calls torchvision's function)."""
    layers = _import("detectron2.layers")
    poolers = _import("detectron2.modeling.poolers")
    tv = _import("torchvision.ops")
    if layers is None or poolers is None or tv is None:
        return {}
    pooler = poolers.ROIPooler
    return {
        layers.ROIAlignRotated: _detectron2_rotated_forward,
        pooler: _detectron2_pooler_forward(
            layers.ROIAlign, layers.ROIAlignRotated, tv.RoIPool, pooler.__dict__["forward"]
        ),
    }


def _mmdet_single_forward(ops, original: Callable, rotated: bool) -> Callable:
    """mmdet's ``SingleRoIExtractor.forward`` (``rotated``: mmrotate's
    ``RotatedSingleRoIExtractor.forward``) on roiops (``roiops.mmdet``'s: every level in
    one launch), what it pools read from its first level's layer. Its loop (whose layers
    are patched) stays for a layer that is not one of ``mmcv.ops``' that roiops knows,
    for max pooling over several levels, and for layers of the other kind of boxes
    (each extractor maps levels for its own: axis-aligned for mmdet's, ``w * h`` for
    mmrotate's)."""

    def forward(self, feats, rois, roi_scale_factor=None):
        first = self.roi_layers[0]
        kind = type(first).__name__
        args = roiops_mmdet.layer_arguments(first)
        if (
            kind not in roiops_mmdet.MMCV_LAYERS
            or (kind in roiops_mmdet.ROTATED_LAYERS) != rotated
            or type(first) is not getattr(ops, kind, None)
            or (args.get("pool_mode") == "max" and len(feats) > 1)
        ):
            return original(self, feats, rois, roi_scale_factor)
        deformable = self.roi_layers if kind in roiops_mmdet.DEFORMABLE_LAYERS else None
        return roiops_mmdet.pool_mmdet(
            list(feats), rois, roi_scale_factor, kind, args, self.out_channels,
            list(self.featmap_strides), self.finest_scale, deformable,
        )  # fmt: skip

    return forward


def _mmdet() -> dict:
    """mmdet's ``SingleRoIExtractor`` and mmrotate's ``RotatedSingleRoIExtractor`` -> the
    roiops ``forward`` that replaces theirs."""
    ops = _import("mmcv.ops")
    if ops is None:
        return {}
    forwards = {}
    for module, name, rotated in (
        ("mmdet.models.roi_heads.roi_extractors", "SingleRoIExtractor", False),
        ("mmrotate.models.roi_heads.roi_extractors", "RotatedSingleRoIExtractor", True),
    ):
        extractors = _import(module)
        if extractors is not None and hasattr(extractors, name):
            extractor = getattr(extractors, name)
            original = extractor.__dict__["forward"]
            forwards[extractor] = _mmdet_single_forward(ops, original, rotated)
    return forwards


MMCV_FUNCTIONS = ("roi_align", "roi_pool", "roi_align_rotated", "riroi_align_rotated",
                  "prroi_pool", "bezier_align", "deform_roi_pool")  # fmt: skip
MMCV_LAYERS = ("RoIAlign", "RoIPool", "RoIAlignRotated", "RiRoIAlignRotated", "PrRoIPool",
               "BezierAlign", "SimpleRoIAlign", "DeformRoIPool", "DeformRoIPoolPack",
               "ModulatedDeformRoIPoolPack")  # fmt: skip


def _mmcv() -> tuple[dict, dict]:
    """``(functions, forwards)`` of ``mmcv.ops`` (what its version has of them; mmcv
    without its compiled ops, e.g. ``mmcv-lite``, has none)."""
    ops = _import("mmcv.ops")
    if ops is None:
        return {}, {}
    functions = {
        getattr(ops, name): getattr(roiops_mmcv, name)
        for name in MMCV_FUNCTIONS
        if hasattr(ops, name)
    }
    forwards = {
        getattr(ops, name): getattr(roiops_mmcv, name).forward
        for name in MMCV_LAYERS
        if hasattr(ops, name)
    }
    return functions, forwards


def _replace(owner: object, attr: str, value: object) -> None:
    _replaced.append((owner, attr, vars(owner).get(attr, _INHERITED)))
    setattr(owner, attr, value)


def patch() -> None:
    """Make the RoI ops and layers of torchvision, detectron2 and mmcv (those installed)
    use roiops (idempotent)."""
    with _lock:
        if _replaced:
            return
        tv_functions, forwards = _torchvision()
        mmcv_functions, mmcv_forwards = _mmcv()
        forwards = {**forwards, **_detectron2(), **mmcv_forwards, **_mmdet()}
        if not forwards:
            raise ImportError(
                "roiops.patch() found none of torchvision, detectron2, mmcv's ops and mmdet "
                "installed: pip install torchvision"
            )
        functions = {**tv_functions, **mmcv_functions}
        by_id = {id(original): ours for original, ours in functions.items()}
        for name, module in list(sys.modules.items()):
            if module is None or name == "roiops" or name.startswith("roiops."):
                continue
            try:
                attributes = list(vars(module).items())
            except TypeError:  # (an entry that is not a module and has no __dict__)
                continue
            for attr, value in attributes:
                if id(value) in by_id and by_id[id(value)] is not value:
                    _replace(module, attr, by_id[id(value)])
        for cls, forward in forwards.items():
            _replace(cls, "forward", forward)


def unpatch() -> None:
    """Undo :func:`patch` (a no-op if nothing is patched)."""
    with _lock:
        while _replaced:
            owner, attr, original = _replaced.pop()
            if original is _INHERITED:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


def is_patched() -> bool:
    return bool(_replaced)
