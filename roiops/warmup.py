"""Compile every CPU kernel before it is needed: ``roiops warmup``.

The CPU kernels are Numba functions, compiled on their first call and cached on disk
(``cache=True``: beside the package, or in Numba's per-user cache where the package
folder is not writable; ``NUMBA_CACHE_DIR`` chooses another place). A fresh install
therefore pays a few seconds on the first call of each op, for each dtype and layout of
its inputs; later processes load the cache. ``warm_up`` pays all of it at once, e.g.
while a container image is built, by running every op forward and backward (input and,
where the op has one, box gradients) on tiny inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch

import roiops
from roiops.cpu.parallel import serial_kernels

SCALES = (0.5, 0.25)


def _calls(x: torch.Tensor, rois: torch.Tensor, rotated: torch.Tensor, pyramid: list,
           offset: torch.Tensor):  # fmt: skip
    """(name, call) of every op and mode, ``call()`` its output; the boxes require grad
    where the op sends them one."""
    plain = rois.detach()
    boxes = [plain[plain[:, 0] == i, 1:] for i in range(x.shape[0])]
    # each box's top and bottom edges as straight Bézier curves (the bottom one reversed)
    x1, y1, x2, y2 = plain[:, 1:].unbind(1)
    t = torch.linspace(0, 1, 4, dtype=plain.dtype)
    along = x1[:, None] + (x2 - x1)[:, None] * t
    top = torch.stack([along, y1[:, None].expand_as(along)], 2).flatten(1)
    bottom = torch.stack([along.flip(1), y2[:, None].expand_as(along)], 2).flatten(1)
    beziers = torch.cat([plain[:, :1], top, bottom], 1)
    return [
        ("roi_align avg", lambda: roiops.roi_align(x, rois, 2, 0.5, 2, True)),
        ("roi_align max", lambda: roiops.roi_align(x, rois, 2, 0.5, 0, False, "max")),
        ("roi_align onnx_max", lambda: roiops.roi_align(x, plain, 2, 0.5, 2, True, "onnx_max")),
        ("roi_pool", lambda: roiops.roi_pool(x, plain, 2, 0.5)),
        ("ps_roi_align", lambda: roiops.ps_roi_align(x, plain, 2, 0.5, 2)),
        ("ps_roi_pool", lambda: roiops.ps_roi_pool(x, plain, 2, 0.5)),
        ("prroi_pool", lambda: roiops.prroi_pool(x, rois, 2, 0.5)),
        ("roi_align_rotated", lambda: roiops.roi_align_rotated(x, rotated, 2, 0.5, 2)),
        ("multi_scale_roi_align",
         lambda: roiops.multi_scale_roi_align(pyramid, boxes, 2, SCALES, 2)),
        ("multi_scale_roi_pool",
         lambda: roiops.multi_scale_roi_pool(pyramid, boxes, 2, SCALES)),
        ("multi_scale_roi_align_rotated",
         lambda: roiops.multi_scale_roi_align_rotated(pyramid, rotated, 2, SCALES, 2)),
        ("deform_roi_pool", lambda: roiops.deform_roi_pool(x, plain, offset, 2, 0.5, 2)),
        # (Deformable ConvNets' own: 4 groups of maps, one offset a RoI)
        ("deform_ps_roi_pool", lambda: roiops.deform_ps_roi_pool(
            x, plain, offset[:, :, :1, :1], 2, 0.5, 2, 1, 2, 0.1)),
        ("bezier_align", lambda: roiops.bezier_align(x, beziers, 2, 0.5, 0)),
        # (TensorFlow's: the boxes normalized, their gradient too)
        ("crop_and_resize", lambda: roiops.crop_and_resize(
            x, rois[:, 1:] / 32, rois[:, 0].long(), 3)),
        # (mmcv's legacy rotated convention, then the orientation turn: 4 groups of 4)
        ("riroi_align_rotated",
         lambda: roiops.riroi_align_rotated(x, rotated, 2, 0.5, 2, 4, True)),
        ("simple_roi_align", lambda: roiops.simple_roi_align(x, plain, 2, 0.5)),
        ("roi_point_sample",
         lambda: roiops.roi_point_sample(x, plain, torch.rand(len(plain), 3, 2), 0.5)),
    ]  # fmt: skip


def _inputs(dtype: torch.dtype, channels_last: bool):
    g = torch.Generator().manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def feature(h, w):
        # 16 channels of 32 x 32 cells: NCHW planes of 4 KiB multiples take the CPU
        # kernels' own transpose (``roiops.cpu.layout.channels_last_array``)
        x = torch.randn(2, 16, h, w, generator=g).to(dtype).contiguous(memory_format=layout)
        return x.requires_grad_()

    corners = torch.tensor([[1.0, 1, 9, 7], [2, 3, 13, 11], [0, 0, 5, 5], [4, 2, 15, 14]])
    batch = torch.tensor([[0.0], [1], [0], [1]])
    rois = torch.cat([batch, corners], 1).to(dtype).requires_grad_()
    centre = (corners[:, :2] + corners[:, 2:]) / 2
    size = corners[:, 2:] - corners[:, :2]
    rotated = torch.cat([batch, centre, size, torch.tensor([[0.0], [30], [-45], [90]])], 1)
    # deform_roi_pool's bins moved by a tenth of their RoI (they require grad)
    offset = torch.full((4, 2, 2, 2), 0.1, dtype=dtype, requires_grad=True)
    pyramid = [feature(32, 32), feature(16, 16)]
    return feature(32, 32), rois, rotated.to(dtype), pyramid, offset


def warm_up(
    dtypes: Iterable[torch.dtype] = (torch.float32, torch.float64),
    report: Callable[[str, float], None] | None = None,
    serial: bool = True,
) -> float:
    """Run every op forward and backward on CPU, for each of ``dtypes`` (half precision
    runs the float32 kernels) and for NCHW and channels_last inputs; ``report(what,
    seconds)`` after each op. With ``serial``, then once more on the kernels' serial
    twins, which a process forked from one running the parallel kernels uses (a
    DataLoader worker: ``roiops.cpu.parallel``; the twins are swapped in for the while,
    so call it where no other thread runs ops). Returns the seconds it took in all."""
    started = time.perf_counter()
    _run_every_op(dtypes, report, "")
    if serial:
        with serial_kernels():
            _run_every_op(dtypes, report, " serial")
    return time.perf_counter() - started


def _run_every_op(dtypes, report, suffix: str) -> None:
    with roiops.use_backend("numba"):
        for dtype in dtypes:
            for channels_last in (False, True):
                x, rois, rotated, pyramid, offset = _inputs(dtype, channels_last)
                leaves = [x, rois, offset, *pyramid]
                for name, call in _calls(x, rois, rotated, pyramid, offset):
                    t0 = time.perf_counter()
                    torch.autograd.grad(call().sum(), leaves, allow_unused=True)
                    if report is not None:
                        layout = "channels_last" if channels_last else "NCHW"
                        report(f"{name} {str(dtype).removeprefix('torch.')} {layout}{suffix}",
                               time.perf_counter() - t0)  # fmt: skip
