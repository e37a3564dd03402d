"""The Triton backward zeroes its fixed-point accumulator only where the RoIs reach
(``roiops.gpu.fixed_point``: ``mark_reach_kernel``). Kernels through Triton's interpreter
(on CUDA compiled): every cell a backward adds to must be marked, for every op and mode,
and the gradients must be the same bits as with the whole accumulator zeroed."""

import math

import numpy as np
import pytest
import torch
from conftest import random_rois
from test_roi_align_rotated import rotated_rois

import roiops
from roiops.gpu import fixed_point
from roiops.gpu import multi_scale_roi_align as gpu_fpn
from roiops.gpu import prroi_pool as gpu_prroi
from roiops.gpu import ps_roi_pool as gpu_ps_pool
from roiops.gpu import roi_align as gpu_align
from roiops.gpu import roi_align_rotated as gpu_rotated
from roiops.gpu import roi_pool as gpu_pool

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LAUNCHERS = (gpu_align, gpu_pool, gpu_ps_pool, gpu_prroi, gpu_rotated, gpu_fpn)


def tensor(a, dtype=torch.float32):
    return torch.as_tensor(np.asarray(a), dtype=dtype, device=DEVICE)


@pytest.fixture
def recorded(monkeypatch):
    """``run(fn, dense)``: fn() with every launcher's accumulator recorded, zeroed where
    the RoIs reach (the launchers' way) or everywhere (``dense``, the RoIs withheld)."""

    def run(fn, dense):
        made = []

        class Recording(fixed_point.Accumulator):
            def __init__(self, grad, *shapes, rois=None, scales=(), levels=None):
                rois = None if dense else rois
                super().__init__(grad, *shapes, rois=rois, scales=scales, levels=levels)
                made.append(self)

        with monkeypatch.context() as patch:
            for module in LAUNCHERS:
                patch.setattr(module, "Accumulator", Recording)
            result = fn()
        return result, made

    return run


def input_grads(call, inputs):
    """The gradients of ``call(*inputs)`` w.r.t. every input, for a fixed output gradient."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    with roiops.use_backend("triton"):
        out = call(*inputs)
        grad = np.random.default_rng(5).standard_normal(out.shape)
        return torch.autograd.grad(out, inputs, tensor(grad, out.dtype))


def boxes(rng, count, h, w, scale):
    """Random boxes around and beyond an h x w map (image coordinates: / scale), some
    inverted, plus boxes on the map's edges, tiny ones and whole-cell ones."""
    extra = np.array(
        [[0, 0, 0, 1, 1], [1, w - 1, h - 1, w, h], [0, -3, -3, 0.2, 0.2], [1, 2, 3, 2, 3],
         [0, w, 1, w + 0.4, 2], [1, 5.5, 2.5, 1.5, 1.0], [0, 3, 4, 3.01, 4.01]]
    )  # fmt: skip
    extra[:, 1:] /= scale
    return np.concatenate([random_rois(rng, 2, count, h / scale, w / scale, max_size=6 / scale),
                           extra])  # fmt: skip


SCALE = 0.5
OPS = {
    "roi_align aligned sr=2": lambda x, r: roiops.roi_align(x, r, 2, SCALE, 2, True),
    "roi_align legacy adaptive": lambda x, r: roiops.roi_align(x, r, 2, SCALE, 0, False),
    "roi_align max": lambda x, r: roiops.roi_align(x, r, 2, SCALE, 2, False, "max"),
    "roi_align onnx_max": lambda x, r: roiops.roi_align(x, r, 2, SCALE, 2, True, "onnx_max"),
    "roi_pool": lambda x, r: roiops.roi_pool(x, r, 2, SCALE),
    "ps_roi_align": lambda x, r: roiops.ps_roi_align(x, r, 2, SCALE, 2),
    "ps_roi_pool": lambda x, r: roiops.ps_roi_pool(x, r, 2, SCALE),
    "prroi_pool": lambda x, r: roiops.prroi_pool(x, r, 2, SCALE),
}


def check(recorded, fn):
    """fn()'s gradients are the same bits with the accumulator zeroed where the RoIs
    reach as with it zeroed everywhere, and every cell the backward added to is marked."""
    reached, made = recorded(fn, dense=False)
    whole, dense = recorded(fn, dense=True)
    assert len(made) == len(dense) >= 1
    for a, b in zip(reached, whole, strict=True):
        assert torch.equal(a, b)
    for sums, full in zip(made, dense, strict=True):
        added = (full.flat.view(-1, full.channels) != 0).any(dim=1)
        assert added.any()  # the test sees additions
        assert bool((sums.flags != 0)[added].all()), "a cell outside the reach was added to"
        assert not bool((sums.flags != 0).all())  # and the reach is not everything


@pytest.mark.parametrize("op", OPS)
def test_reach_holds_every_cell_the_backward_adds_to(rng, recorded, op):
    channels = 8 if op.startswith("ps") else 2  # 2 output channels x 2 x 2 bins
    x = tensor(rng.standard_normal((2, channels, 13, 17)))
    rois = tensor(boxes(rng, 9, 13, 17, SCALE))
    check(recorded, lambda: input_grads(lambda t: OPS[op](t, rois), [x]))


@pytest.mark.parametrize("aligned", [True, False])
def test_reach_of_rotated_boxes(rng, recorded, aligned):
    x = tensor(rng.standard_normal((2, 2, 13, 17)))
    rois = rotated_rois(rng, 2, 9, 26, 34)
    rois[:, 3:5] *= 0.25  # mostly small boxes, some under a cell, at every angle
    rois[:3, 3:5] = [[0.5, 7.0], [9.0, 0.2], [0.0, 0.0]]
    rois = tensor(rois)
    check(recorded, lambda: input_grads(
        lambda t: roiops.roi_align_rotated(t, rois, 2, SCALE, 2, aligned), [x]))  # fmt: skip


@pytest.mark.parametrize("op", ["multi_scale_roi_align", "multi_scale_roi_pool"])
def test_reach_of_pyramid_levels(rng, recorded, op):
    p2 = tensor(rng.standard_normal((2, 2, 16, 20)))
    p3 = tensor(rng.standard_normal((2, 2, 8, 10)))
    rois = tensor(boxes(rng, 9, 16, 20, 0.25))
    levels = tensor(rng.integers(0, 2, len(rois)), torch.int64)
    if op == "multi_scale_roi_align":

        def call(a, b):
            return roiops.multi_scale_roi_align([a, b], rois, 2, [0.25, 0.125], 2, True,
                                                levels=levels)  # fmt: skip
    else:

        def call(a, b):
            return roiops.multi_scale_roi_pool([a, b], rois, 2, [0.25, 0.125], levels=levels)

    check(recorded, lambda: input_grads(call, [p2, p3]))


def marked(rois, shape, scale=1.0, levels=None, shapes=None):
    """The reach's flags of ``rois`` over maps ``shapes`` (or one map ``shape``)."""
    shapes = shapes or [shape]
    grad = torch.ones(len(rois), 1, 1, 1, device=DEVICE)
    scales = [scale] * len(shapes) if not isinstance(scale, list) else scale
    sums = fixed_point.Accumulator(grad, *shapes, rois=rois, scales=scales, levels=levels)
    return sums.flags


def slack(lo, hi):
    return (abs(lo) + abs(hi)) * 2.0**-18 + 2.0**-10


@pytest.mark.parametrize(
    "box", [(8.0, 4.0, 13.0, 9.0), (9.0, 3.0, 14.0, 6.0), (11.0, 9.0, 7.0, 9.5)]
)
def test_reach_is_the_box_with_half_a_cell_before_and_a_cell_after(box):
    # x from floor(min(x1s, x2s) - 0.5) to floor(max(x1s, x2s, x1s + 1)) + 1 (the
    # bilinear neighbour), each end moved out by the rounding slack (which takes an end
    # on a whole cell one cell further: the second box); likewise y; other images
    # untouched
    rois = tensor([[1, *box]])
    flags = marked(rois, (2, 1, 12, 14), scale=0.5).view(2, 12, 14)
    x1, y1, x2, y2 = (v * 0.5 for v in box)
    ends = []
    for a, b in ((x1, x2), (y1, y2)):
        lo, hi = min(a, b) - 0.5, max(a, b, a + 1)
        ends.append((math.floor(lo - slack(lo, hi)), math.floor(hi + slack(lo, hi)) + 1))
    (x0, x1), (y0, y1) = ends
    expected = torch.zeros(2, 12, 14, dtype=torch.int8, device=DEVICE)
    expected[1, y0 : y1 + 1, x0 : x1 + 1] = 1
    assert torch.equal(flags, expected)


def test_reach_of_bad_values():
    # a bad batch index marks nothing (such a RoI sends no gradient); a non-finite
    # coordinate marks its image's whole map; boxes far outside mark nothing; a huge one
    # marks everything
    nan, inf = float("nan"), float("inf")
    shape = (3, 1, 5, 6)
    for row, images in (
        ([3, 0, 0, 2, 2], []),
        ([-1, 0, 0, 2, 2], []),
        ([0.5, 0, 0, 2, 2], []),
        ([nan, 0, 0, 2, 2], []),
        ([1, nan, 0, 2, 2], [1]),
        ([2, 0, 0, inf, 2], [2]),
        ([0, 1e30, 1e30, 2e30, 2e30], []),
        ([0, -50, -50, -20, -20], []),
        ([0, -1e30, -1e30, 1e30, 1e30], [0]),
    ):
        flags = marked(tensor([row]), shape).view(3, 5, 6)
        for image in range(3):
            assert bool((flags[image] != 0).all()) == (image in images), row
            assert bool((flags[image] != 0).any()) == (image in images), row


def test_reach_of_levels_and_rotated_rows():
    # level l's box marks part l of the flags at its own scale; a level out of range
    # marks nothing; a rotated box marks a square about its centre, whatever the angle
    rois = tensor([[0, 4.0, 4.0, 8.0, 8.0], [1, 4.0, 4.0, 8.0, 8.0], [0, 4.0, 4.0, 8.0, 8.0]])
    levels = tensor([0, 1, 2], torch.int64)
    flags = marked(rois, None, [0.5, 0.25], levels, [(2, 1, 8, 8), (2, 1, 4, 4)])
    p2, p3 = flags[: 2 * 64].view(2, 8, 8), flags[2 * 64 :].view(2, 4, 4)
    assert torch.equal(p2[0] != 0, region(8, 8, 1, 5)) and not p2[1].any()
    assert torch.equal(p3[1] != 0, region(4, 4, 0, 3)) and not p3[0].any()
    for angle in (0.0, 30.0, 90.0, -135.0):
        rotated = tensor([[0, 10.0, 10.0, 4.0, 2.0, angle]])
        flags = marked(rotated, (1, 1, 20, 20)).view(20, 20)
        # centre 10, half-extent (4 + 2) / 2 = 3: cells [floor(10 - 0.5 - 3), 10 + 3 + 1]
        assert torch.equal(flags != 0, region(20, 20, 6, 14))


def region(h, w, first, last):
    """A square of cells [first, last] on both axes of an h x w map."""
    out = torch.zeros(h, w, dtype=torch.bool, device=DEVICE)
    out[first : last + 1, first : last + 1] = True
    return out


def test_a_gradient_that_reaches_nothing_is_written_as_zeros():
    # one RoI far off the map marks no cell: the accumulator is never zeroed nor read,
    # and every cell of the (uninitialised) gradient is written as 0
    grad = torch.ones(1, 2, 2, 2, device=DEVICE)
    rois = tensor([[0, 100.0, 100.0, 120.0, 120.0]])
    out = torch.full((2, 2, 5, 6), float("nan"), device=DEVICE)
    gx = gpu_align.roi_align_backward(grad, rois, None, out, 1.0, 2, 2, 2, True)
    assert torch.equal(gx, torch.zeros_like(gx))
