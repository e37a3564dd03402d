"""ONNX export of ``roi_align`` and ``roi_pool`` (and the FPN pooler built on them).

``torch.onnx.export`` of a model that calls roiops writes standard ONNX operators:

* ``roi_align`` -> ``RoiAlign`` (opset >= 16: ``coordinate_transformation_mode`` is
  ``half_pixel`` for ``aligned=True``, ``output_half_pixel`` for ``aligned=False``; opset
  10-15 know only the latter, so ``aligned=True`` needs 16). ``sampling_ratio <= 0``
  (adaptive) is written as ONNX's 0, which means the same. ``mode="avg"`` is ONNX's
  ``avg``. ONNX's ``max`` is not the article's max (``roiops`` ``mode="max"``): it takes
  the largest *weighted corner term* ``w_i * v_i`` of each sampling point, not the
  largest interpolated value; roiops offers it as ``mode="onnx_max"`` (eager numbers equal
  to what an ONNX runtime computes from the exported model). Exporting ``mode="max"``
  raises: no ONNX operator computes it, and writing ONNX's max would change the numbers.
* ``roi_pool`` -> ``MaxRoiPool`` (the same quantization as torchvision and roiops).
* ``multi_scale_roi_align`` / ``MultiScaleRoIAlign`` / ``ROIPooler`` -> one ``RoiAlign``
  (or ``MaxRoiPool``) per level over all RoIs, and a per-RoI selection of its level's
  result (what torchvision's ``MultiScaleRoIAlign`` also exports to); the level mapping
  is ordinary tensor arithmetic.
* The other ops (position-sensitive, rotated, Precise RoI Pooling) have no ONNX operator:
  exporting them raises an error naming the op.

Both exporters work: the TorchScript one (``dynamo=False``) through symbolic functions
registered for the custom ops (``register()``, done on import), and the ``torch.export``
one (``dynamo=True``) through ``torch.onnx.ops.symbolic`` nodes that the public functions
emit while ``torch.onnx.is_in_onnx_export()``. Half precision inputs are exported as
roiops computes them: cast to float32, pooled, cast back. ``spatial_scale`` is an ONNX
float attribute (float32): exact for the usual powers of two.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from roiops import _validate

# RoiAlign's coordinate_transformation_mode (half_pixel, i.e. aligned=True) exists from 16
HALF_PIXEL_OPSET = 16


def exporting() -> bool:
    """Whether ``torch.onnx.export`` is tracing the caller (either exporter)."""
    # Both exporters trace: torch.jit's tracer, or torch.export under dynamo or a dispatch
    # mode (fake tensors). Those flags cost a tenth of is_in_onnx_export (~1 us a call).
    C = torch._C
    # is_compiling first: under torch.compile the other two are not evaluated
    tracing = torch.compiler.is_compiling() or C._is_tracing() or C._len_torch_dispatch_stack()
    return bool(tracing) and torch.onnx.is_in_onnx_export()


def _with_dynamo() -> bool:
    # the TorchScript exporter traces with torch.jit; torch.export (dynamo=True) does not
    return not torch.jit.is_tracing()


def not_exportable(op: str) -> None:
    """Raise the error for an op that no ONNX operator expresses, while exporting."""
    if exporting():
        raise NotImplementedError(
            f"{op}: no ONNX operator computes it, so a model that calls it cannot be "
            "exported to ONNX (roi_align, roi_pool and the axis-aligned FPN poolers can)"
        )


def refuse_custom_op(op: str) -> None:
    """Called by the forward custom ops' fake implementations: while exporting to ONNX a
    fake runs only when the custom op itself is being captured, which ONNX cannot express:
    ``torch.onnx.export(dynamo=True)`` falling back to torch.export's strict capture
    after its first (non-strict) attempt failed, or a direct ``torch.ops.roiops`` call.
    Failing here lets the exporter report that first error (it reports the first one
    when every capture fails), instead of a missing translation for the custom op."""
    if exporting():
        raise RuntimeError(
            f"roiops::{op} cannot be written to ONNX as a custom op: roiops writes ONNX "
            "operators from its public functions (roiops.roi_align, roiops.roi_pool, ...), "
            "in torch.export's non-strict capture; see the error of that first capture, "
            "and call the public functions rather than torch.ops.roiops"
        )


def _onnx_mode(mode: str) -> str:
    """ONNX RoiAlign's ``mode`` attribute for roiops' ``mode`` (an error for the article's max)."""
    if mode == "max":
        raise ValueError(
            "roi_align: mode='max' (the maximum of the interpolated sampling points) has no "
            "ONNX operator: ONNX RoiAlign's 'max' takes the largest weighted corner term "
            "of each point instead. Export mode='avg', or use mode='onnx_max' (ONNX's "
            "definition, in eager too) to get the same numbers before and after export."
        )
    return "max" if mode == "onnx_max" else "avg"


def _roi_align_attributes(spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, mode):
    return {
        "coordinate_transformation_mode": "half_pixel" if aligned else "output_half_pixel",
        "mode": _onnx_mode(mode),
        "output_height": pooled_h,
        "output_width": pooled_w,
        "sampling_ratio": max(sampling_ratio, 0),
        "spatial_scale": float(spatial_scale),
    }


def _check_scale(spatial_scale: float, input: Tensor, op: str) -> None:
    """ONNX stores spatial_scale as a float32 attribute; float64 features would be pooled
    at the float64 scale in eager: refuse a scale that float32 would change."""
    if input.dtype == torch.float64 and float(np.float32(spatial_scale)) != spatial_scale:
        raise ValueError(
            f"{op}: spatial_scale={spatial_scale!r} is not a float32 number, and ONNX stores "
            "it as one: the exported model would pool float64 features at another scale "
            "than eager roiops; use a scale float32 represents exactly (e.g. a power of two)"
        )


def _compute(input: Tensor) -> Tensor:
    """``input`` in the dtype roiops computes it in (no traced cast when it already is)."""
    dtype = _validate.compute_dtype(input.dtype)
    return input if input.dtype == dtype else input.to(dtype)


def _as(out: Tensor, like: Tensor) -> Tensor:
    return out if out.dtype == like.dtype else out.to(like.dtype)


def _node(op, op_type, inputs, attributes, input, rois, spatial_scale, pooled, eager):
    """``op`` while exporting: ``eager(x, rois)`` (a custom op, which the TorchScript
    exporter's symbolic function turns into ``op_type``) or, for torch.export, an
    ``op_type`` node on ``inputs(x, rois)``; ``x`` is the input in its compute dtype, the
    result is cast back."""
    _check_scale(spatial_scale, input, op)
    x = _compute(input)
    if not _with_dynamo():
        return _as(eager(x, rois), input)
    out = torch.onnx.ops.symbolic(
        op_type,
        inputs(x, rois),
        attributes,
        dtype=x.dtype,
        shape=(rois.shape[0], x.shape[1], *pooled),
    )
    return _as(out, input)


def roi_align(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, mode,
              eager) -> Tensor:  # fmt: skip
    """``roi_align`` while exporting: RoiAlign (see ``_node``)."""
    attributes = _roi_align_attributes(
        spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, mode
    )

    def inputs(x, rois):
        return (x, rois[:, 1:5], rois[:, 0].to(torch.int64))

    return _node("roi_align", "RoiAlign", inputs, attributes, input, rois, spatial_scale,
                 (pooled_h, pooled_w), eager)  # fmt: skip


def roi_pool(input, rois, spatial_scale, pooled_h, pooled_w, eager) -> Tensor:
    """``roi_pool`` while exporting: MaxRoiPool (see ``_node``)."""
    attributes = {"pooled_shape": [pooled_h, pooled_w], "spatial_scale": float(spatial_scale)}
    return _node("roi_pool", "MaxRoiPool", lambda x, rois: (x, rois), attributes, input, rois,
                 spatial_scale, (pooled_h, pooled_w), eager)  # fmt: skip


def select_levels(per_level: list[Tensor], levels: Tensor) -> Tensor:
    """``out[k] = per_level[levels[k]][k]``: each RoI's result from its own level."""
    stacked = torch.stack(per_level)  # [L, K, C, h, w]
    index = levels.view(1, -1, 1, 1, 1).expand(1, *stacked.shape[1:])
    return torch.gather(stacked, 0, index).squeeze(0)


# ------------------------------------------------------------- TorchScript exporter
def _symbolics():
    from torch.onnx import symbolic_helper as sh

    def batch_indices(g, rois):
        column = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor(0)), axis_i=1)
        return g.op("Cast", column, to_i=7)  # int64

    def boxes(g, rois):
        return g.op("Gather", rois, g.op("Constant", value_t=torch.tensor([1, 2, 3, 4])), axis_i=1)

    def roi_align_node(g, input, rois, scale, ph, pw, ratio, aligned, mode, opset):
        attributes = _roi_align_attributes(scale, ph, pw, ratio, aligned, mode)
        if opset < HALF_PIXEL_OPSET:
            if aligned:
                raise ValueError(
                    f"roi_align: aligned=True needs ONNX opset >= {HALF_PIXEL_OPSET} "
                    f"(RoiAlign's coordinate_transformation_mode), export with "
                    f"opset_version={HALF_PIXEL_OPSET} or later"
                )
            mode_attribute = {}  # opset 10-15: output_half_pixel is the only behaviour
        else:
            mode_attribute = {
                "coordinate_transformation_mode_s": attributes["coordinate_transformation_mode"]
            }
        return g.op(
            "RoiAlign",
            input,
            boxes(g, rois),
            batch_indices(g, rois),
            mode_s=attributes["mode"],
            output_height_i=ph,
            output_width_i=pw,
            sampling_ratio_i=attributes["sampling_ratio"],
            spatial_scale_f=scale,
            **mode_attribute,
        )

    def roi_align_for(opset, mode):
        @sh.parse_args("v", "v", "f", "i", "i", "i", "b")
        def symbolic(g, input, rois, scale, ph, pw, ratio, aligned):
            out = roi_align_node(g, input, rois, scale, ph, pw, ratio, aligned, mode, opset)
            return out if mode == "avg" else (out, None)

        return symbolic

    @sh.parse_args("v", "v", "f", "i", "i")
    def roi_pool(g, input, rois, scale, ph, pw):
        return g.op("MaxRoiPool", input, rois, pooled_shape_i=[ph, pw], spatial_scale_f=scale)

    @sh.parse_args("v", "v", "f", "i", "i")
    def roi_pool_with_argmax(g, input, rois, scale, ph, pw):
        return roi_pool(g, input, rois, scale, ph, pw), None

    return roi_align_for, roi_pool, roi_pool_with_argmax


def register() -> None:
    """Register the TorchScript exporter's symbolic functions for roiops' custom ops."""
    roi_align_for, roi_pool, roi_pool_with_argmax = _symbolics()
    for opset in (10, HALF_PIXEL_OPSET):
        torch.onnx.register_custom_op_symbolic(
            "roiops::roi_align", roi_align_for(opset, "avg"), opset
        )
        torch.onnx.register_custom_op_symbolic(
            "roiops::roi_align_onnx_max", roi_align_for(opset, "onnx_max"), opset
        )
    torch.onnx.register_custom_op_symbolic("roiops::roi_pool_inference", roi_pool, 1)
    torch.onnx.register_custom_op_symbolic("roiops::roi_pool", roi_pool_with_argmax, 1)
