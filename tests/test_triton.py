"""The Triton kernels, run on CPU tensors through Triton's interpreter, vs the reference.

conftest.py sets TRITON_INTERPRET=1 on machines without CUDA, before triton is first
imported. Shapes are small: the interpreter runs every program in NumPy.
"""

import itertools
import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch
from conftest import as_tensor, random_rois
from hypothesis import given, settings
from hypothesis import strategies as st

import roiops
from roiops.gpu import fixed_point
from roiops.gpu import multi_scale_roi_align as gpu_multi
from roiops.gpu import ps_roi_pool as gpu_ps_pool
from roiops.gpu import roi_align as gpu_align
from roiops.gpu import roi_pool as gpu_pool
from roiops.gpu import tiles as gpu_tiles
from roiops.reference import roi_pool as ref_roi_pool

# compiled kernels on a GPU, the interpreter on CPU tensors elsewhere
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1",
    reason="CPU tensors reach the Triton kernels only through TRITON_INTERPRET=1",
)


def on_device(array, dtype):
    return as_tensor(array, dtype).to(DEVICE)


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}

# Kernels the launchers do not take by default (alternatives kept for a GPU's timing, or
# fallbacks above a size limit) run one case of each test of theirs in the default run and
# the others under ``-m slow`` (ROIOPS_SLOW=1), to keep the default run short: the switch
# and the value it has while that holds. Turning one of them on (or the default off)
# fails ``test_slow_alternatives_are_as_marked``: its slow cases go back to the default run.
SLOW_ALTERNATIVES = {
    (gpu_ps_pool, "BAND"): 0,  # (the scatter in bands of rows: slower, off)
    (gpu_pool, "REGIONS"): False,  # (roi_pool's sums in the RoIs' regions: untimed, off)
}


def slow_cases(*cases):
    """Parameter ``cases`` (tuples, or single values) of the slow run: SLOW_ALTERNATIVES."""
    return [
        pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=pytest.mark.slow)
        for case in cases
    ]


def test_slow_alternatives_are_as_marked():
    for (module, name), value in SLOW_ALTERNATIVES.items():
        assert getattr(module, name) == value, (
            f"{module.__name__}.{name} is no longer {value!r}: unmark the slow cases that "
            "test its kernels (SLOW_ALTERNATIVES)"
        )


def assert_forward_matches(mode, out, ref):
    """The reference's outputs: bit for bit in the interpreter (the reference's
    arithmetic in its order) and for roi_pool anywhere (no multiply-add to contract, IEEE
    division); roi_align compiled for a GPU within float rounding, because the compiler
    fuses ``a * b + c`` into FMA (as nvcc does for torchvision)."""
    if DEVICE == "cpu" or mode == "pool":
        assert torch.equal(out, ref)
    else:
        torch.testing.assert_close(out, ref, **TOL[out.dtype])


def align(backend, x, rois, output_size, scale, ratio, aligned, mode, grad):
    x = x.detach().clone().requires_grad_()
    with roiops.use_backend(backend):
        out = roiops.roi_align(x, rois, output_size, scale, ratio, aligned, mode)
        out.backward(grad)
    return out.detach(), x.grad


def pool(backend, x, rois, output_size, scale, grad):
    x = x.detach().clone().requires_grad_()
    with roiops.use_backend(backend):
        out = roiops.roi_pool(x, rois, output_size, scale)
        out.backward(grad)
    return out.detach(), x.grad


def run(backend, mode, x, rois, output_size, scale, grad, ratio=2, aligned=True):
    """(output, input gradient): roi_align in mode "avg"/"max", or roi_pool ("pool")."""
    if mode == "pool":
        return pool(backend, x, rois, output_size, scale, grad)
    return align(backend, x, rois, output_size, scale, ratio, aligned, mode, grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize(
    "aligned,ratio,scale", [(False, 0, 0.5), (True, 2, 1 / 3), (True, -1, 0.25)]
)
def test_roi_align_matches_reference(rng, dtype, mode, aligned, ratio, scale):
    x = on_device(rng.standard_normal((2, 5, 9, 11)), dtype)
    rois = on_device(random_rois(rng, 2, 8, 9 / scale, 11 / scale), dtype)
    grad = on_device(rng.standard_normal((8, 5, 3, 4)), dtype)
    out, gx = align("triton", x, rois, (3, 4), scale, ratio, aligned, mode, grad)
    ref_out, ref_gx = align("reference", x, rois, (3, 4), scale, ratio, aligned, mode, grad)
    assert_forward_matches(mode, out, ref_out)
    # backward: fixed-point sums, exact to far below float rounding, not the same bits
    torch.testing.assert_close(gx, ref_gx, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [0.5, 1 / 3])
def test_roi_pool_matches_reference(rng, dtype, scale):
    x = on_device(np.round(rng.standard_normal((2, 5, 9, 11)) * 2), dtype)  # ties included
    rois = on_device(random_rois(rng, 2, 8, 9 / scale, 11 / scale), dtype)
    grad = on_device(rng.standard_normal((8, 5, 3, 4)), dtype)
    out, gx = pool("triton", x, rois, (3, 4), scale, grad)
    ref_out, ref_gx = pool("reference", x, rois, (3, 4), scale, grad)
    assert_forward_matches("pool", out, ref_out)
    # fixed-point sums: exact to far below float rounding, not the same bits
    torch.testing.assert_close(gx, ref_gx, **TOL[dtype])


def valid_rois(rois: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Which rows of ``rois`` the ops' value check would pass (finite coordinates, a whole
    batch index in range): those the reference takes."""
    index = rois[:, 0]
    whole = (index == torch.floor(index)) & (index >= 0) & (index < batch_size)
    return torch.isfinite(rois[:, 1:]).all(1) & whole


@pytest.mark.parametrize(
    "dtype,channels_last",
    # (float64 with a channels_last gradient and float16 in the slow run: the default
    # suite is near its 10 minutes on 2 cores)
    [(torch.float32, False)] + slow_cases((torch.float64, True), (torch.float16, False)),
)
def test_roi_pool_backward_over_hard_boxes(rng, dtype, channels_last):
    # the backward against the reference, over what could make it miss an output or take
    # one twice: RoIs of a cell or less under 7x7 bins (a cell in up to 49 bins), dozens
    # over one cell, boxes beyond the map and far beyond it, 19 channels (blocks of 16),
    # either argmax layout (the NHWC forward's is channels last), half precision; and
    # RoIs the kernels must skip (NaN, inf, a batch index out of range or not whole: no
    # gradient, as the reference without them); every cell written
    n, c, h, w = 2, 19, 21, 19
    x = on_device(np.round(rng.standard_normal((n, c, h, w)) * 2), dtype)  # ties included
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    boxes = np.concatenate(
        [
            random_rois(rng, n, 16, 2 * h, 2 * w, min_size=-4, max_size=6),
            random_rois(rng, n, 8, 2 * h, 2 * w, min_size=10, max_size=40),
            [[0, 1e9, 1e9, 2e9, 2e9], [1, -1e9, -1e9, 1e9, 1e9], [1, 9.0, 9.0, 9.2, 9.2]],
            [[0, np.nan, 1, 2, 3], [1, 1, 2, np.inf, 3], [2, 1, 1, 9, 9], [0.5, 1, 1, 9, 9]],
        ]
    )
    rois = on_device(boxes, torch.float64 if dtype == torch.float64 else torch.float32)
    grad = on_device(rng.standard_normal((len(boxes), c, 7, 7)), dtype)
    _, argmax = gpu_pool.roi_pool_forward(x, rois, 0.5, 7, 7)
    prefilled = torch.full_like(x, float("nan"), memory_format=torch.contiguous_format)
    gx = gpu_pool.roi_pool_backward(grad, rois, argmax, prefilled, 0.5)
    ok = valid_rois(rois, n)
    assert not ok.all()
    _, ref = pool("reference", x, rois[ok], 7, 0.5, grad[ok])
    torch.testing.assert_close(gx, ref, **TOL.get(dtype, dict(rtol=1e-3, atol=1e-3)))


def off_then_on(monkeypatch, module, switch, forward):
    """``(forward() with module.switch False, forward() with it True)``."""
    monkeypatch.setattr(module, switch, False)
    off = forward()
    monkeypatch.setattr(module, switch, True)
    return off, forward()


def assert_same_bits(got, expected):
    """The same values bit for bit (NaN for the skipped RoIs; -0.0 is not 0.0)."""
    assert torch.equal(got.isnan(), expected.isnan())
    ints = torch.int16 if got.element_size() == 2 else torch.int32
    assert torch.equal(got.nan_to_num().view(ints), expected.nan_to_num().view(ints))


@pytest.mark.parametrize(
    "output_size,dtype",
    [((7, 7), torch.float32)] + slow_cases(((3, 5), torch.float16), ((2, 2), torch.float32)),
)
def test_roi_pool_forward_2x2_at_a_time_changes_no_bit(rng, monkeypatch, output_size, dtype):
    # the NCHW forward visiting its bins 2x2 cells at a time (VISIT_2X2) gives the
    # outputs and argmax of the cell-by-cell visit, bit for bit, and the reference's:
    # three values only (ties across blocks: the lowest cell wins, the first of a
    # row-major visit; -0.0 and 0.0 too, equal: the first's sign), NaN and -inf patches
    # (never a winner), bins of a cell or less and of up to a dozen cells a side, boxes
    # beyond the map, RoIs the kernels skip; half precision; the FPN pooler's kernel
    n, c, h, w = 2, 3, 17, 15
    values = rng.integers(-1, 2, (n, c, h, w)).astype(np.float64)
    values[values == 0] *= rng.choice([-1.0, 1.0], np.count_nonzero(values == 0))
    values[0, 1, 3:9, 2:7] = np.nan
    values[1, 2, :, 4] = -np.inf
    boxes = np.concatenate(
        [
            random_rois(rng, n, 8, 2 * h, 2 * w, min_size=-4, max_size=8),
            random_rois(rng, n, 6, 2 * h, 2 * w, min_size=20, max_size=60),
            [[0, 1e9, 1e9, 2e9, 2e9], [1, 20, -1e9, 24, 1e9]],
            [[0, np.nan, 1, 2, 3], [2, 1, 1, 9, 9], [0.5, 1, 1, 9, 9]],
        ]
    )
    rois = on_device(boxes, torch.float32)
    ok = valid_rois(rois, n)

    both = partial(off_then_on, monkeypatch, gpu_pool, "VISIT_2X2")
    x = on_device(values, dtype)
    (out, argmax), (got, got_argmax) = both(
        partial(gpu_pool.roi_pool_forward, x, rois, 0.5, *output_size)
    )
    assert_same_bits(got, out)
    assert torch.equal(got_argmax, argmax)
    ref, _ = pool("reference", x, rois[ok], output_size, 0.5, torch.zeros_like(got[ok]))
    assert_same_bits(got[ok], ref)
    features = [x[:, :, : h >> i, : w >> i].contiguous() for i in range(2)]
    levels = torch.from_numpy(rng.integers(0, 2, len(boxes))).to(DEVICE)
    (out, argmax), (got, got_argmax) = both(
        partial(
            gpu_multi.multi_scale_roi_pool_forward,
            features,
            rois,
            levels,
            [0.5, 0.25],
            *output_size,
        )  # fmt: skip
    )
    assert_same_bits(got, out)
    assert torch.equal(got_argmax, argmax)


@pytest.mark.parametrize("dtype", [torch.float32, *slow_cases(torch.float16)])
def test_roi_align_forward_reusing_loads_changes_no_bit(rng, monkeypatch, dtype):
    # the NCHW forward's points taking the columns the previous point of their row
    # loaded (REUSE_LOADS) give the outputs and argmax of loading every corner, bit for
    # bit, and the reference's: an adaptive grid (its points at most a cell apart) in
    # average mode and a fixed one of 3 (crowding into small bins) in ONNX max mode (the
    # slow case: average, max and ONNX max on both, and the legacy convention); NaN
    # and inf patches (a value taken again is the same NaN); points beyond the map's end
    # after points inside (0, not the columns before them: ONNX max's corner of a 0 that
    # wins over negative values) and inside after points beyond its start; bins of a
    # cell or less and of a dozen cells; inverted RoIs (their points run backwards);
    # RoIs the kernels skip; (slow case) position-sensitive pooling and the FPN pooler's
    # kernel
    n, c, h, w = 2, 2, 17, 15
    values = rng.standard_normal((n, c, h, w))
    values[0, 1, 3:9, 2:7] = np.nan
    values[1, 1, :, 4] = np.inf
    values[1, 0, 6, :] = -np.inf
    values[0, 0] = -np.abs(values[0, 0])  # (ONNX max: a point beyond the map, 0, wins)
    boxes = np.concatenate(
        [
            random_rois(rng, n, 6, 2 * h, 2 * w, min_size=-6, max_size=8),
            random_rois(rng, n, 3, 2 * h, 2 * w, min_size=16, max_size=30),
            [[0, 40, 40, 60, 60], [1, 20, -10, 24, 50], [1, 28, 30, 4, 2]],
            # (columns off the map's end: a fixed grid's points 1.67 cells apart, the last
            # inside at 13.5 (both weights > 0), the next at 15.17; off its start: points
            # at -1.5 (outside) then -0.67 (inside, column 0 loaded); rows off the end)
            [[0, 26.34, 2, 66.34, 22], [1, -2.833, 2, 17.167, 22], [0, 20, 4, 40, 14]],
            [[0, 4, 24, 14, 44]],
            [[0, np.nan, 1, 2, 3], [2, 1, 1, 9, 9], [0.5, 1, 1, 9, 9]],
        ]
    )
    rois = on_device(boxes, torch.float32)
    ok = valid_rois(rois, n)
    x = on_device(values, dtype)

    both = partial(off_then_on, monkeypatch, gpu_align, "REUSE_LOADS")
    modes = (False, True, gpu_align.ONNX_MAX_MODE)
    combinations = [(0, True, False), (3, True, modes[2])]
    if dtype == torch.float16:  # (the slow case: every mode on both grids, and legacy)
        combinations = [*((r, True, m) for r in (0, 3) for m in modes), (3, False, False)]
    for ratio, aligned, mode in combinations:
        (out, argmax), (got, got_argmax) = both(
            partial(gpu_align.roi_align_forward, x, rois, 0.5, 3, 4, ratio, aligned, mode)
        )
        assert_same_bits(got, out)
        if mode:
            assert torch.equal(got_argmax, argmax)
    # "wide": a RoI's rows reuse where they have 3 points or more (the adaptive grid's
    # rows here have 1 to 5: each RoI takes one branch or the other), a fixed grid of 3
    # everywhere
    monkeypatch.setattr(gpu_align, "REUSE_MIN_POINTS", 3)
    for ratio in (0, 3):
        forward = partial(gpu_align.roi_align_forward, x, rois, 0.5, 3, 4, ratio, True, modes[2])
        monkeypatch.setattr(gpu_align, "REUSE_LOADS", False)
        out, argmax = forward()
        monkeypatch.setattr(gpu_align, "REUSE_LOADS", "wide")
        got, got_argmax = forward()
        assert_same_bits(got, out)
        assert torch.equal(got_argmax, argmax)
    with roiops.use_backend("reference"):
        ref = roiops.roi_align(x, rois[ok], (3, 4), 0.5, 0, True)
    got, _ = gpu_align.roi_align_forward(x, rois[ok], 0.5, 3, 4, 0, True, False)
    if DEVICE == "cpu":
        assert_same_bits(got, ref)
    else:  # (compiled: within float rounding, FMA; assert_forward_matches)
        torch.testing.assert_close(got, ref, equal_nan=True)
    if dtype != torch.float16:  # (position-sensitive pooling and the FPN pooler: slow case)
        return
    scores = on_device(rng.standard_normal((n, 2 * 6, 9, 8)), dtype)  # 2 outputs of 2x3 bins
    forward = partial(gpu_align.roi_align_forward, position_sensitive=True)
    (out, _), (got, _) = both(partial(forward, scores, rois, 0.5, 2, 3, 0, True, False))
    assert_same_bits(got, out)
    features = [x[:, :, : h >> i, : w >> i].contiguous() for i in range(2)]
    levels = torch.from_numpy(rng.integers(0, 2, len(boxes))).to(DEVICE)
    forward = partial(gpu_multi.multi_scale_roi_align_forward, features, rois, levels)
    out, got = both(partial(forward, [0.5, 0.25], 3, 4, 3, True))
    assert_same_bits(got, out)


@pytest.mark.parametrize("output_size", [(1, 1), (2, 5), (8, 3)])
def test_roi_pool_backward_any_bin_grid(rng, output_size):
    # bin grids whose bins share rows or columns (roi_pool's bins overlap by a cell where
    # the size is not a multiple of the count), from either argmax layout
    x = on_device(np.round(rng.standard_normal((2, 5, 9, 11)) * 2), torch.float32)
    rois = on_device(random_rois(rng, 2, 12, 18, 22), torch.float32)
    grad = on_device(rng.standard_normal((12, 5, *output_size)), torch.float32)
    _, ref = pool("reference", x, rois, output_size, 0.5, grad)
    _, argmax = gpu_pool.roi_pool_forward(x, rois, 0.5, *output_size)
    for layout in (argmax, argmax.contiguous()):
        gx = gpu_pool.roi_pool_backward(grad, rois, layout, torch.empty_like(x), 0.5)
        torch.testing.assert_close(gx, ref, **TOL[torch.float32])


def spoil_regions(monkeypatch) -> list:
    """Every ``Regions`` made from now on, its buffers filled with garbage when made, and
    every accumulator zeroed by regions, before: a region's cells must be zeroed, the
    flags cleared, nothing else read. Returns the list the regions go to."""
    made = []
    init, zero_and_bound = fixed_point.Regions.__init__, fixed_point.Regions.zero_and_bound

    def spoilt_init(self, rois, shape):
        init(self, rois, shape)
        for buffer, junk in ((self.rects, 7), (self.parts, 3), (self.flags, 1)):
            buffer.fill_(junk)
        made.append(self)

    def spoilt_zero(self, flat, grad, channels):
        flat.fill_(-(2**40) + 5)
        return zero_and_bound(self, flat, grad, channels)

    monkeypatch.setattr(fixed_point.Regions, "__init__", spoilt_init)
    monkeypatch.setattr(fixed_point.Regions, "zero_and_bound", spoilt_zero)
    return made


def regions_backward(monkeypatch, backward, chosen):
    """(gradient, regions) of ``backward()`` (a backward launcher's call) with REGIONS,
    from garbage (``spoil_regions``); the regions ``chosen``, or the whole map (their
    share made unreachable; by 3 programs, each zeroing several blocks)."""
    made = spoil_regions(monkeypatch)
    monkeypatch.setattr(gpu_pool, "REGIONS", True)
    monkeypatch.setattr(gpu_align, "REGIONS", True)
    monkeypatch.setattr(fixed_point, "REGION_SUM_SHARE", 2 if chosen else 2**62)
    monkeypatch.setattr(fixed_point, "WHOLE_PROGRAMS", 3)
    gx = backward()
    monkeypatch.undo()
    (regions,) = made
    return gx, regions


def region_boxes(rng, n, h, w, huge):
    """RoIs of 0-4 cells on a map of h x w cells at spatial_scale 0.5, some partly or
    wholly beyond it, and RoIs the kernels skip (NaN, inf, a batch index out of range or
    not whole); ``huge``: one more over the whole map (the regions then sum to more than
    the map's share)."""
    boxes = [
        random_rois(rng, n, 24, 2 * h, 2 * w, min_size=-4, max_size=8),
        [[0, 1e6, 1e6, 1e6 + 8, 1e6 + 5], [1, -30.0, -30.0, 3.0, 3.0]],
        [[1, 2 * w - 3, 9, 2 * w + 9, 12]],
        [[0, np.nan, 1, 2, 3], [1, 1, 2, np.inf, 3], [2, 1, 1, 9, 9], [0.5, 1, 1, 9, 9]],
    ]
    if huge:
        boxes.append([[1, -1e9, -1e9, 1e9, 1e9]])
    return np.concatenate(boxes)


@pytest.mark.parametrize(
    "mode,dtype,channels_last,chosen",
    # (REGIONS is off: one case by default, SLOW_ALTERNATIVES)
    [("pool", torch.float32, False, True)]
    + slow_cases(("avg", torch.float32, False, True), ("pool", torch.float32, False, False),
                 ("pool", torch.float64, True, True),
                 ("pool", torch.float16, True, False), ("max", torch.float32, True, True),
                 ("avg", torch.float64, False, False), ("max", torch.bfloat16, False, True)),
)  # fmt: skip
def test_backward_in_regions_changes_no_bit(rng, monkeypatch, mode, dtype, channels_last,
                                            chosen):  # fmt: skip
    # the fixed-point sums zeroed and read only in the RoIs' regions (or the whole map,
    # when they are not chosen) give the bits of the whole accumulator's: roi_pool from
    # either argmax layout, roi_align aligned or not, with a fixed and an adaptive grid
    # (inverted aligned boxes' points run backwards), over RoIs the kernels skip, boxes
    # beyond the map and channels past a block of 128 (the regions' zeroing; roi_pool) and
    # of 32 (the conversion)
    n, c, h, w = 2, 130 if mode == "pool" else 36, 24, 21
    x = on_device(np.round(rng.standard_normal((n, c, h, w)) * 2), dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # (a box over the whole map would make an adaptive grid of 10**9 points a side)
    boxes = region_boxes(rng, n, h, w, huge=False)
    rois = on_device(boxes, torch.float64 if dtype == torch.float64 else torch.float32)
    grad = on_device(rng.standard_normal((len(boxes), c, 2, 2)), dtype)
    for ratio, aligned in [(2, True), (0, False)] if mode != "pool" else [(2, True)]:
        whole = backward_launch(mode, x, rois, grad, torch.empty_like(x), 2, ratio, aligned)
        prefilled = torch.full_like(x, float("nan"))
        launch = partial(backward_launch, mode, x, rois, grad, prefilled, 2, ratio, aligned)
        gx, regions = regions_backward(monkeypatch, launch, chosen)
        assert regions.chosen() == chosen
        assert torch.equal(gx, whole)


def test_regions_choice_follows_its_settings_call_by_call(rng, monkeypatch):
    # the zeroing's launch is kept per key (``tiles.cached``), which holds the choice's
    # settings: one call's regions chosen do not make the next one's (the slow cases of
    # roi_pool above failed so when run together)
    n, c, h, w = 1, 3, 12, 10
    x = on_device(rng.standard_normal((n, c, h, w)), torch.float32)
    rois = on_device(random_rois(rng, n, 4, 2 * h, 2 * w, min_size=1, max_size=4), torch.float32)
    grad = on_device(rng.standard_normal((4, c, 2, 2)), torch.float32)
    for chosen in (True, False, True):
        _, regions = regions_backward(
            monkeypatch, partial(backward_launch, "pool", x, rois, grad, torch.empty_like(x)),
            chosen,
        )  # fmt: skip
        assert regions.chosen() == chosen


@pytest.mark.parametrize(
    "output_size,channels_last,regions",
    [((7, 7), False, False)] + slow_cases(((9, 9), True, True), ((3, 5), False, True)),
)  # fmt: skip
def test_roi_pool_scatter_in_runs_changes_no_bit(rng, monkeypatch, output_size, channels_last,
                                                 regions):  # fmt: skip
    # runs of bins on one argmax cell added once (RUNS, the default) give the bits of an
    # atomic each:
    # RoIs of a cell or two under many bins (runs across rows of bins, up to every bin),
    # ties, RoIs the kernels skip and boxes beyond the map (bins of argmax -1 inside and
    # between runs), 81 bins (a run cut by the end of a tile of 64), either argmax layout,
    # with and without regions
    n, c, h, w = 2, 19, 16, 14
    x = on_device(np.round(rng.standard_normal((n, c, h, w))), torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tiny = random_rois(rng, n, 12, 2 * h, 2 * w, min_size=0, max_size=3)
    boxes = np.concatenate([region_boxes(rng, n, h, w, huge=False), tiny])
    rois = on_device(boxes, torch.float32)
    grad = on_device(rng.standard_normal((len(boxes), c, *output_size)), torch.float32)
    _, argmax = gpu_pool.roi_pool_forward(x, rois, 0.5, *output_size)
    monkeypatch.setattr(gpu_pool, "REGIONS", regions)
    monkeypatch.setattr(gpu_pool, "RUNS", False)
    each = gpu_pool.roi_pool_backward(grad, rois, argmax, torch.empty_like(x), 0.5)
    monkeypatch.setattr(gpu_pool, "RUNS", True)
    runs = gpu_pool.roi_pool_backward(grad, rois, argmax, torch.empty_like(x), 0.5)
    assert torch.equal(runs, each)
    _, ref = pool("reference", x, rois[valid_rois(rois, n)], output_size, 0.5,
                  grad[valid_rois(rois, n)])  # fmt: skip
    torch.testing.assert_close(runs, ref, **TOL[torch.float32])


@pytest.mark.parametrize("channels_last", [False] + slow_cases(True))
def test_roi_pool_scatter_in_regions_drops_an_argmax_outside_the_region(rng, monkeypatch,
                                                                       channels_last):  # fmt: skip
    # with REGIONS the scatter adds only inside each RoI's region, where the forward's
    # argmax always lies: an argmax elsewhere (here the map's last cell, beyond every RoI)
    # routes nothing, by runs (RUNS: the neighbours skip the region test) as by an atomic
    # each: the bits of the same argmax with those bins at -1. (The regions not chosen:
    # the whole map is converted, so a cell added outside them would show.)
    monkeypatch.setattr(fixed_point, "REGION_SUM_SHARE", 2**62)
    n, c, h, w = 2, 5, 16, 14
    x = on_device(np.round(rng.standard_normal((n, c, h, w))), torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # RoIs of 0-3 cells over the map's first 10 or so rows and columns
    rois = on_device(random_rois(rng, n, 12, h, w, min_size=0, max_size=3), torch.float32)
    grad = on_device(rng.standard_normal((12, c, 7, 7)), torch.float32)
    _, argmax = gpu_pool.roi_pool_forward(x, rois, 0.5, 7, 7)
    elsewhere = torch.from_numpy(rng.random(tuple(argmax.shape)) < 0.3).to(argmax.device)
    far, dropped = argmax.clone(), argmax.clone()  # (in the argmax's layout)
    far[elsewhere] = h * w - 1
    dropped[elsewhere] = -1

    def backward(argmax, regions, runs):
        monkeypatch.setattr(gpu_pool, "REGIONS", regions)
        monkeypatch.setattr(gpu_pool, "RUNS", runs)
        return gpu_pool.roi_pool_backward(grad, rois, argmax, torch.empty_like(x), 0.5)

    expected = backward(dropped, False, False)
    assert not torch.equal(backward(far, False, False), expected)  # (the far cell adds)
    for runs in (False, True):
        assert torch.equal(backward(far, True, runs), expected), runs


def union_of_bins(box, scale, pooled, h, w):
    """(h0, h1, w0, w1): the reference's bins' union for one RoI (empty: h1 == h0)."""
    q = ref_roi_pool.quantize_roi(box, scale, np.float32)
    rows = [ref_roi_pool.bin_edges(q.start_h, q.height, pooled[0], i, h, np.float32)
            for i in range(pooled[0])]  # fmt: skip
    cols = [ref_roi_pool.bin_edges(q.start_w, q.width, pooled[1], j, w, np.float32)
            for j in range(pooled[1])]  # fmt: skip
    h0, h1 = min(r[0] for r in rows), max(r[1] for r in rows)
    w0, w1 = min(r[0] for r in cols), max(r[1] for r in cols)
    return (h0, h1, w0, w1) if h0 < h1 and w0 < w1 else (h0, h0, w0, max(w1, w0))


def test_the_regions_launch_follows_region_rois_call_by_call(rng, monkeypatch):
    # the regions kernel's launch is kept per key (``tiles.cached``), which holds its RoIs
    # a round: a call after REGION_ROIS changed builds its own
    rois = on_device(region_boxes(rng, 2, 13, 11, huge=False), torch.float32)
    blocks = []

    class Recorded(fixed_point.Launch):
        __slots__ = ()

        def __init__(self, kernel, grid, values=(), **kwargs):
            blocks.append(kwargs.get("BLOCK"))
            super().__init__(kernel, grid, values, **kwargs)

    monkeypatch.setattr(fixed_point, "Launch", Recorded)
    gpu_tiles.clear_caches()
    default = fixed_point.REGION_ROIS
    first = gpu_pool.roi_pool_regions(rois, (2, 3, 13, 11), 0.5, 3, 5).rects
    monkeypatch.setattr(fixed_point, "REGION_ROIS", 16)
    again = gpu_pool.roi_pool_regions(rois, (2, 3, 13, 11), 0.5, 3, 5).rects
    gpu_tiles.clear_caches()
    assert blocks == [default, 16] and default != 16 and torch.equal(first, again)


def test_roi_pool_regions_are_the_union_of_the_bins(rng, monkeypatch):
    # each RoI's region is its bins' union as the reference cuts them (bins of 0-4 cells
    # that overlap, partly or wholly beyond the map), an invalid RoI's empty; the areas'
    # pieces sum to the areas where some programs take two rounds of 16 RoIs, the last
    # one partial; the flags are cleared, garbage before
    n, h, w = 2, 13, 11
    boxes = np.concatenate([region_boxes(rng, n, h, w, huge=True)] * 12)
    rois = on_device(boxes, torch.float32)
    monkeypatch.setattr(fixed_point, "REGION_ROIS", 16)
    assert fixed_point.REGION_PARTS.value * 16 < len(boxes) < fixed_point.REGION_PARTS.value * 32
    spoil_regions(monkeypatch)
    regions = gpu_pool.roi_pool_regions(rois, (n, 3, h, w), 0.5, 3, 5)
    rects = regions.rects.cpu().numpy()
    ok = valid_rois(rois, n).cpu().numpy()
    for rect, box, valid in zip(rects, boxes, ok, strict=True):
        want = union_of_bins(box[1:], 0.5, (3, 5), h, w) if valid else None
        if want is None:
            assert rect[1] == rect[2], box
        else:
            assert tuple(rect[1:]) == want and rect[0] == int(box[0]), box
    areas = (rects[:, 2] - rects[:, 1]).astype(np.int64) * (rects[:, 4] - rects[:, 3])
    parts = regions.parts.cpu().numpy()
    half = fixed_point.REGION_PARTS.value
    assert parts[:half].sum() == areas.sum() and parts[half : 2 * half].max() == areas.max()
    assert not regions.flags.any()


@pytest.mark.parametrize("chosen", [True, *slow_cases(False)])
def test_roi_pool_backward_in_regions_drops_a_foreign_argmax(rng, monkeypatch, chosen):
    # an argmax the forward did not write (any cell of the plane, -1, past it) adds only
    # inside its RoI's region (the forward's never lies outside), whichever is zeroed
    n, c, h, w = 2, 6, 16, 14
    boxes = region_boxes(rng, n, h, w, huge=not chosen)
    rois = on_device(boxes, torch.float32)
    grad = on_device(rng.standard_normal((len(boxes), c, 2, 3)), torch.float32)
    argmax = rng.integers(-1, h * w + 3, (len(boxes), c, 2, 3)).astype(np.int32)
    inside = np.zeros(argmax.shape, bool)
    ok = valid_rois(rois, n).cpu().numpy()
    for k, box in enumerate(boxes):
        if ok[k]:
            h0, h1, w0, w1 = union_of_bins(box[1:], 0.5, (2, 3), h, w)
            rows, cols = argmax[k] // w, argmax[k] % w
            inside[k] = (argmax[k] >= 0) & (rows >= h0) & (rows < h1) & (cols >= w0) & (cols < w1)
    kept = np.where(inside, argmax, -1)
    ref = ref_roi_pool.roi_pool_backward(grad.cpu().numpy()[ok], rois.cpu().numpy()[ok],
                                         kept[ok], (n, c, h, w))  # fmt: skip
    # (the kernels take the argmax [K, ph, pw, C] channel-major: [K, C, ph, pw]'s memory)
    laid = on_device(argmax, torch.int32).permute(0, 2, 3, 1)
    into = grad.new_empty((n, c, h, w))
    gx, _ = regions_backward(
        monkeypatch, lambda: gpu_pool.roi_pool_backward(grad, rois, laid, into, 0.5), chosen
    )
    torch.testing.assert_close(gx, on_device(ref, torch.float32), **TOL[torch.float32])


@settings(max_examples=8)
@given(
    c=st.integers(1, 20),
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    k=st.integers(0, 5),
    oh=st.integers(1, 3),
    ow=st.integers(1, 3),
    ratio=st.integers(-1, 2),
    aligned=st.booleans(),
    mode=st.sampled_from(["avg", "max", "pool"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_triton_equals_reference(c, h, w, k, oh, ow, ratio, aligned, mode, seed):
    rng = np.random.default_rng(seed)
    x = on_device(rng.standard_normal((2, c, h, w)), torch.float32)
    rois = on_device(random_rois(rng, 2, k, 2 * h, 2 * w), torch.float32)
    grad = on_device(rng.standard_normal((k, c, oh, ow)), torch.float32)
    fast, ref = (
        run(b, mode, x, rois, (oh, ow), 0.5, grad, ratio, aligned) for b in ("triton", "reference")
    )
    assert_forward_matches(mode, fast[0], ref[0])
    torch.testing.assert_close(fast[1], ref[1], **TOL[torch.float32])


@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_forward_blocks_start_inside_a_channel(rng, mode):
    # 23 channels x 49 bins = 1127 outputs per RoI: several blocks of outputs per RoI,
    # the later ones starting in the middle of a channel's bins
    assert 23 * 49 > gpu_tiles.FORWARD_BLOCK and gpu_tiles.FORWARD_BLOCK % 49
    x = on_device(rng.standard_normal((2, 23, 10, 12)), torch.float32)
    rois = on_device(random_rois(rng, 2, 5, 20, 24, min_size=1.0), torch.float32)
    grad = on_device(rng.standard_normal((5, 23, 7, 7)), torch.float32)
    fast, ref = (run(b, mode, x, rois, 7, 0.5, grad) for b in ("triton", "reference"))
    assert_forward_matches(mode, fast[0], ref[0])
    torch.testing.assert_close(fast[1], ref[1], **TOL[torch.float32])


@pytest.mark.parametrize(
    "mode,aligned,ratio,span",
    [("avg", True, 2, 8), ("avg", False, 0, 2), ("max", True, 2, 8), ("pool", 0, 0, 8)],
)
def test_backward_over_large_bins_and_many_rois(rng, monkeypatch, mode, aligned, ratio, span):
    # 5x5 bins over boxes spanning the map and beyond, inverted, tiny, at the far corner;
    # with adaptive sampling the bins cover several cells, and with windows of 2 cells
    # the average-mode backward sums a bin's weights over several windows
    monkeypatch.setattr(gpu_align, "SPAN", span)
    x = on_device(rng.standard_normal((2, 2, 21, 27)), torch.float32)
    rois = random_rois(rng, 2, 16, 21 / 0.5, 27 / 0.5)
    rois[:6, 1:] = [[-20, -20, 70, 60], [3, 3, 50, 30], [0, 0, 54, 42], [50, 40, 4, 6],
                    [30, 10, 31, 11], [52, 40, 55, 43]]  # fmt: skip
    rois = on_device(rois, torch.float32)
    grad = on_device(rng.standard_normal((16, 2, 5, 5)), torch.float32)
    fast, ref = (
        run(b, mode, x, rois, 5, 0.5, grad, ratio, aligned) for b in ("triton", "reference")
    )
    assert_forward_matches(mode, fast[0], ref[0])
    torch.testing.assert_close(fast[1], ref[1], **TOL[torch.float32])


def backward_launch(mode, x, rois, grad, grad_input, output_size=2, ratio=2, aligned=True):
    """The Triton backward launcher of ``mode`` with the forward's argmax, writing into
    ``grad_input``; the forward runs on the Triton kernels."""
    if mode == "pool":
        _, argmax = gpu_pool.roi_pool_forward(x, rois, 0.5, output_size, output_size)
        return gpu_pool.roi_pool_backward(grad, rois, argmax, grad_input, 0.5)
    argmax = None
    if mode == "max":
        _, argmax = gpu_align.roi_align_forward(
            x, rois, 0.5, output_size, output_size, ratio, aligned, True
        )
    return gpu_align.roi_align_backward(
        grad, rois, argmax, grad_input, 0.5, output_size, output_size, ratio, aligned
    )


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_backward_kernels_write_every_cell_in_either_layout(rng, mode, channels_last):
    # the ops hand the kernels an uninitialised gradient (NCHW on CUDA, channels_last on
    # CPU): cells no RoI reaches (most of this map) must be written as zeros, whatever
    # the memory held, through the gradient's strides
    x = on_device(rng.standard_normal((2, 3, 19, 21)), torch.float32)
    rois = on_device(random_rois(rng, 2, 3, 10, 10, min_size=1.0), torch.float32)
    grad = on_device(rng.standard_normal((3, 3, 2, 2)), torch.float32)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    prefilled = torch.full_like(x, float("nan"), memory_format=layout)
    gx = backward_launch(mode, x, rois, grad, prefilled)
    ref = run("reference", mode, x, rois, 2, 0.5, grad)[1]
    assert (ref == 0).float().mean() > 0.5
    torch.testing.assert_close(gx, ref, **TOL[torch.float32])


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_input_gradient_layout_by_device(rng, op):
    # channels_last strides on CPU (the Numba kernels' layout), NCHW on CUDA (torchvision's)
    grad = on_device(rng.standard_normal((3, 4, 2, 2)), torch.float32)
    rois = on_device(random_rois(rng, 2, 3, 10, 10, min_size=1.0), torch.float32)
    with roiops.use_backend("triton"):
        if op == "roi_pool":
            argmax = torch.zeros((3, 2, 2, 4), dtype=torch.int32, device=DEVICE)
            gx = torch.ops.roiops.roi_pool_backward(grad, argmax, rois, 0.5, 2, 4, 9, 11)
        else:
            gx = torch.ops.roiops.roi_align_backward(grad, rois, 0.5, 2, 2, 2, True, 2, 4, 9, 11)
    layout = torch.channels_last if DEVICE == "cpu" else torch.contiguous_format
    assert gx.shape == (2, 4, 9, 11) and gx.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_backward_bitwise_deterministic(rng, mode):
    x = on_device(rng.standard_normal((1, 4, 8, 8)), torch.float32)
    # many RoIs over the same cells: where atomics would race
    rois = on_device(random_rois(rng, 1, 12, 16, 16, min_size=6), torch.float32)
    grad = on_device(rng.standard_normal((12, 4, 2, 2)), torch.float32)
    runs = []
    for _ in range(2):
        runs.append(run("triton", mode, x, rois, 2, 0.5, grad)[1])
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_backward_runs_under_torch_deterministic_mode(rng, mode):
    # torch.use_deterministic_algorithms(True) makes torch raise in ops that have only
    # nondeterministic CUDA kernels; none of those may sit on the backward's path
    x = on_device(rng.standard_normal((2, 3, 8, 8)), torch.float32)
    rois = on_device(random_rois(rng, 2, 6, 16, 16, min_size=1.0), torch.float32)
    grad = on_device(rng.standard_normal((6, 3, 2, 2)), torch.float32)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        gx = run("triton", mode, x, rois, 2, 0.5, grad)[1]
    finally:
        torch.use_deterministic_algorithms(before)
    assert gx.shape == x.shape and torch.isfinite(gx).all()


def test_empty_boxes():
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    with roiops.use_backend("triton"):
        assert roiops.roi_align(x, torch.zeros(0, 5, device=DEVICE), 2).shape == (0, 3, 2, 2)
        assert roiops.roi_pool(x, torch.zeros(0, 5, device=DEVICE), 2).shape == (0, 3, 2, 2)


def test_roi_pool_inference_equals_the_training_op(rng):
    x = on_device(np.round(rng.standard_normal((2, 23, 9, 11)) * 2), torch.float32)  # ties
    rois = on_device(random_rois(rng, 2, 6, 18, 22), torch.float32)
    with roiops.use_backend("triton"):
        out, _ = torch.ops.roiops.roi_pool(x, rois, 0.5, 7, 7)
        assert torch.equal(torch.ops.roiops.roi_pool_inference(x, rois, 0.5, 7, 7), out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_half_precision_is_read_directly_and_accumulated_in_float32(rng, dtype, mode):
    x = on_device(rng.standard_normal((2, 6, 8, 8)), dtype)
    rois = on_device(random_rois(rng, 2, 5, 16, 16, min_size=2), torch.float32)
    grad = on_device(rng.standard_normal((5, 6, 2, 2)), dtype)
    fast, ref = (run(b, mode, x, rois, 2, 0.5, grad) for b in ("triton", "reference"))
    assert fast[0].dtype == dtype and fast[1].dtype == dtype
    # both compute in float32 and round once at the end; Triton's interpreter rounds
    # float32 -> bfloat16 by truncation, so allow one unit in the last place
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("op", ["roi_align", "roi_align_max", "roi_pool", "roi_pool_inference"])
def test_opcheck_on_triton_backend(rng, op):
    x = on_device(rng.standard_normal((2, 3, 6, 7)), torch.float32)
    x.requires_grad_(op != "roi_pool_inference")
    rois = on_device(random_rois(rng, 2, 4, 12, 14, min_size=1.0), torch.float32)
    args = (x, rois, 0.5, 2, 3) if op.startswith("roi_pool") else (x, rois, 0.5, 2, 3, 2, True)
    with roiops.use_backend("triton"):
        torch.library.opcheck(getattr(torch.ops.roiops, op), args)


@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_torch_compile_fullgraph_on_triton_backend(rng, mode):
    x = on_device(rng.standard_normal((2, 3, 6, 7)), torch.float32).requires_grad_()
    rois = on_device(random_rois(rng, 2, 5, 12, 14, min_size=1.0), torch.float32)

    def f(t):
        if mode == "pool":
            out = roiops.roi_pool(t, rois, 2, 0.5)
        else:
            out = roiops.roi_align(t, rois, 2, 0.5, 2, True, mode)
        return out.square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    with roiops.use_backend("triton"):
        (g_compiled,) = torch.autograd.grad(compiled(x), x)
        (g_eager,) = torch.autograd.grad(f(x), x)
    assert torch.equal(g_compiled, g_eager)


@pytest.mark.parametrize(
    "args",
    # float32 in full; the other dtypes in what their element type changes (--lean), and
    # in full in the slow run (the alternatives that are off, unaligned boxes)
    [
        ("fp32",),
        ("--lean", "fp16", "bf16", "fp64"),
        pytest.param(("fp16", "bf16", "fp64"), marks=pytest.mark.slow),
    ],
)
def test_kernels_compile_for_hopper(args):
    # in a fresh process: this one has the kernels defined for the interpreter. (Parts
    # that pytest-xdist can run side by side: with Triton's cache cold, as on a fresh CI
    # machine, the whole check takes minutes of one process.)
    script = os.path.join(os.path.dirname(__file__), "triton_compile_check.py")
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


# A RoI with a batch index that is not a whole number in [0, N), or with a coordinate
# that is not finite: on CUDA the ops do not look at the values (that would synchronise),
# so the kernels must take any value: no read outside the input, NaN outputs, no gradient.
BAD_ROIS = [
    [2.0, 1.0, 1.0, 8.0, 8.0],  # batch index == N
    [-1.0, 1.0, 1.0, 8.0, 8.0],
    [0.5, 1.0, 1.0, 8.0, 8.0],
    [float("nan"), 1.0, 1.0, 8.0, 8.0],
    [1e9, 1.0, 1.0, 8.0, 8.0],
    [0.0, float("nan"), 1.0, 8.0, 8.0],
    [1.0, 1.0, float("inf"), 8.0, 8.0],
    [1.0, 1.0, 1.0, -float("inf"), 8.0],
    [0.0, 1.0, 1.0, 8.0, float("nan")],
]


@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_kernels_take_any_roi_value(rng, mode):
    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    good = random_rois(rng, 2, 4, 18, 22, min_size=1.0)
    rois = np.concatenate([good[:2], BAD_ROIS, good[2:]])
    is_bad = np.zeros(len(rois), bool)
    is_bad[2 : 2 + len(BAD_ROIS)] = True
    rois_t = on_device(rois, torch.float32)
    grad = on_device(rng.standard_normal((len(rois), 3, 2, 2)), torch.float32)
    if mode == "pool":
        out, _ = gpu_pool.roi_pool_forward(x, rois_t, 0.5, 2, 2)
    else:
        out, _ = gpu_align.roi_align_forward(x, rois_t, 0.5, 2, 2, 2, True, mode == "max")
    gx = backward_launch(mode, x, rois_t, grad, torch.empty_like(x))
    assert torch.isnan(out[torch.from_numpy(is_bad)]).all()
    # the good RoIs' outputs, and a gradient from them alone
    good_t = on_device(rois[~is_bad], torch.float32)
    ref_out, ref_gx = run("reference", mode, x, good_t, 2, 0.5, grad[torch.from_numpy(~is_bad)])
    assert_forward_matches(mode, out[torch.from_numpy(~is_bad)], ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


# boxes whose adaptive grid (sampling_ratio 0, 2x2 bins, scale 0.5) would take more than
# MAX_ADAPTIVE_GRID (2**16) points a bin along an axis: 75,000 / 2.5e11 / 2.5e29
HUGE_ROIS = [[0, 0.0, 0.0, 3e5, 4.0], [1, 1.0, 1.0, 6.0, 1e12], [0, -1e30, -1e30, 1e30, 1e30]]


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_an_absurd_adaptive_grid_makes_a_roi_invalid(rng, mode):
    # (before: a grid the kernels' float-to-int conversion saturated, 2**31 points an
    # axis, or one they looped over for hours; torchvision's CUDA kernel does the same)
    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    good = random_rois(rng, 2, 3, 18, 22, min_size=1.0)
    rois = on_device(np.concatenate([good[:1], HUGE_ROIS, good[1:]]), torch.float32)
    huge = torch.zeros(len(rois), dtype=torch.bool)
    huge[1 : 1 + len(HUGE_ROIS)] = True
    out, argmax = gpu_align.roi_align_forward(x, rois, 0.5, 2, 2, 0, True, mode == "max")
    assert torch.isnan(out[huge.to(DEVICE)]).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_align.roi_align_backward(grad, rois, argmax, torch.empty_like(x), 0.5, 2, 2, 0,
                                      True)  # fmt: skip
    ref_out, ref_gx = run("reference", mode, x, rois[~huge.to(DEVICE)], 2, 0.5,
                          grad[~huge.to(DEVICE)], 0)  # fmt: skip
    assert_forward_matches(mode, out[~huge.to(DEVICE)], ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


@pytest.mark.parametrize(
    "ratio,dtype",
    [(0, torch.float32), (2, torch.float32), (0, torch.float64), (0, torch.float16),
     (0, torch.bfloat16)],
)  # fmt: skip
def test_adaptive_and_fixed_grids_in_every_dtype(rng, ratio, dtype):
    # the average-mode forward and backward on an NCHW map with an adaptive grid (ratio
    # 0; RoI-major, ADAPTIVE_ROIS_INNER) or a fixed one, in every dtype (halves read as
    # they are and summed in float32)
    x = on_device(rng.standard_normal((2, 3, 10, 12)), dtype)
    box_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    rois = on_device(random_rois(rng, 2, 5, 20, 24, min_size=1.0), box_dtype)
    grad = on_device(rng.standard_normal((5, 3, 2, 2)), dtype)
    fast, ref = (run(b, "avg", x, rois, 2, 0.5, grad, ratio) for b in ("triton", "reference"))
    assert fast[0].dtype == dtype
    # (halves: both sum in float32 and round once; the interpreter truncates to bfloat16)
    torch.testing.assert_close(fast[0], ref[0], **TOL.get(dtype, dict(rtol=1e-2, atol=1e-3)))
    torch.testing.assert_close(fast[1], ref[1], **TOL.get(dtype, dict(rtol=1e-2, atol=1e-2)))


# boxes of finite coordinates that overflow float32 once scaled (here by 2): a corner, the
# width, the height (RoIPool's rounding of such a box has no answer; the reference refuses)
OVERFLOWING_ROIS = [[0, 1.0, 1.0, 2e38, 8.0], [1, -1.5e38, 1.0, 1.5e38, 8.0],
                    [0, 1.0, -1e38, 8.0, 1e38]]  # fmt: skip


@pytest.mark.parametrize("op", ["avg", "max", "pool", "ps_pool", "prroi"])
def test_boxes_that_overflow_once_scaled_are_invalid(rng, op):
    from roiops.gpu import prroi_pool as gpu_prroi

    x = on_device(rng.standard_normal((2, 8, 9, 11)), torch.float32)
    good = random_rois(rng, 2, 3, 4, 5, min_size=1.0)
    rois = on_device(np.concatenate([good[:1], OVERFLOWING_ROIS, good[1:]]), torch.float32)
    bad = torch.zeros(len(rois), dtype=torch.bool, device=DEVICE)
    bad[1 : 1 + len(OVERFLOWING_ROIS)] = True
    if op == "pool":
        out, argmax = gpu_pool.roi_pool_forward(x, rois, 2.0, 2, 2)
        gx = gpu_pool.roi_pool_backward(torch.ones_like(out), rois, argmax, torch.empty_like(x),
                                        2.0)  # fmt: skip
    elif op == "ps_pool":
        out = gpu_ps_pool.ps_roi_pool_forward(x, rois, 2.0, 2, 2)
        gx = gpu_ps_pool.ps_roi_pool_backward(torch.ones_like(out), rois, torch.empty_like(x),
                                              2.0)  # fmt: skip
    elif op == "prroi":
        out = gpu_prroi.prroi_pool_forward(x, rois, 2.0, 2, 2)
        gx = gpu_prroi.prroi_pool_backward(torch.ones_like(out), rois, torch.empty_like(x), 2.0)
    else:
        out, argmax = gpu_align.roi_align_forward(x, rois, 2.0, 2, 2, 2, True, op == "max")
        gx = gpu_align.roi_align_backward(torch.ones_like(out), rois, argmax, torch.empty_like(x),
                                          2.0, 2, 2, 2, True)  # fmt: skip
    assert torch.isnan(out[bad]).all() and torch.isfinite(out[~bad]).all()
    leaf = x.detach().clone().requires_grad_()
    with roiops.use_backend("reference"):
        call = {
            "pool": lambda: roiops.roi_pool(leaf, rois[~bad], 2, 2.0),
            "ps_pool": lambda: roiops.ps_roi_pool(leaf, rois[~bad], 2, 2.0),
            "prroi": lambda: roiops.prroi_pool(leaf, rois[~bad], 2, 2.0),
        }.get(op, lambda: roiops.roi_align(leaf, rois[~bad], 2, 2.0, 2, True, op))
        ref = call()
        ref.sum().backward()
        # (the refusal these kernels stand in for on CUDA)
        with pytest.raises(ValueError, match="box 1 .* overflows torch.float32"):
            roiops.roi_pool(x, rois, 2, 2.0)
    assert_forward_matches("avg" if op == "prroi" else op, out[~bad], ref)
    torch.testing.assert_close(gx, leaf.grad, **TOL[torch.float32])


@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_non_finite_output_gradient_gives_nan_input_gradient(rng, mode):
    # fixed point cannot carry NaN or inf to the cells they reach: the whole input
    # gradient is NaN (visible; what AMP's GradScaler checks for to skip a step)
    x = on_device(rng.standard_normal((2, 3, 8, 8)), torch.float32)
    rois = on_device(random_rois(rng, 2, 4, 16, 16, min_size=2.0), torch.float32)
    for bad in (float("nan"), float("inf")):
        grad = on_device(rng.standard_normal((4, 3, 2, 2)), torch.float32)
        grad[1, 2, 0, 1] = bad
        gx = backward_launch(mode, x, rois, grad, torch.empty_like(x))
        assert torch.isnan(gx).all()


def max_abs(amax: torch.Tensor) -> float:
    """``max |grad|`` from its pieces (``Accumulator.amax``: the bits of float32
    magnitudes, or of float64 ones), or torch's float (TORCH_BOUND_GRADIENTS)."""
    if amax.is_floating_point():
        return float(amax)
    wide = torch.float64 if amax.dtype == torch.int64 else torch.float32
    return float(amax.max().view(wide))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_max_grad_by_torch_changes_no_bit(rng, monkeypatch, dtype):
    # max |grad| taken by torch's vector_norm (a float, from TORCH_BOUND_GRADIENTS
    # gradients on) instead of in pieces by zero_and_bound_kernel: the same max, so the
    # same fixed-point scale and the same gradient bits, for each backward scatter (the
    # FPN pooler's and ps_roi_pool's sums as differences too); NaN and inf still make the
    # whole gradient NaN
    x = on_device(rng.standard_normal((2, 3, 8, 8)), dtype)
    rois = on_device(random_rois(rng, 2, 4, 16, 16, min_size=2.0), torch.float32)
    grad = on_device(rng.standard_normal((4, 3, 2, 2)) * 1e3, dtype)
    scores = on_device(rng.standard_normal((2, 3 * 4, 8, 8)), dtype)
    levels = torch.tensor([0, 1, 1, 0], device=DEVICE)
    monkeypatch.setattr(gpu_ps_pool, "BAND", 2)

    def backwards(g):
        out = [backward_launch("avg", x, rois, g, torch.empty_like(x))]
        if dtype != torch.float32:  # (the max's other bits; the other kernels in float32)
            return out
        out += [backward_launch(mode, x, rois, g, torch.empty_like(x)) for mode in ("max", "pool")]
        out.append(gpu_ps_pool.ps_roi_pool_backward(g, rois, torch.empty_like(scores), 0.5))
        features = [x.clone(), x[:, :, :4, :4].clone()]
        grads = [torch.empty_like(f) for f in features]
        gpu_multi.multi_scale_roi_align_backward(g, rois, levels, [0.5, 0.25], grads, 2, True)
        return out + grads

    def both(g):
        monkeypatch.setattr(fixed_point, "TORCH_BOUND_GRADIENTS", 2**62)
        in_pieces = backwards(g)
        monkeypatch.setattr(fixed_point, "TORCH_BOUND_GRADIENTS", 0)
        return in_pieces, backwards(g)

    for got, expected in zip(*both(grad), strict=True):
        assert torch.equal(got, expected)
        assert got.abs().sum() > 0
    for bound in (0, 2**62):  # (either way, the max itself)
        monkeypatch.setattr(fixed_point, "TORCH_BOUND_GRADIENTS", bound)
        assert max_abs(fixed_point.Accumulator(grad, x.shape).amax) == grad.abs().max()
    for bad in (float("nan"), float("inf")):
        worse = grad.clone()
        worse[2, 1, 1, 0] = bad
        monkeypatch.setattr(fixed_point, "TORCH_BOUND_GRADIENTS", 0)
        assert torch.isnan(backward_launch("avg", x, rois, worse, torch.empty_like(x))).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_zero_and_bound_zeroes_and_takes_the_max_in_pieces(rng, dtype):
    # one launch zeroes the accumulator and takes max |grad| in AMAX_PARTS pieces: a
    # gradient of more than AMAX_PARTS blocks (some programs take two, the last block is
    # partial) and one of a single element (most pieces see nothing); the largest
    # magnitude negative and in the last, partial block; a non-finite value anywhere, in
    # either gradient, makes the max non-finite, NaN (above inf in the bits) or inf
    parts, block = fixed_point.AMAX_PARTS.value, fixed_point.amax_block(dtype)
    for size in (parts * block + block // 2 + 3, 1):
        grad = on_device(rng.uniform(-1, 1, size), dtype)
        grad[-1] = -3.0
        flat = torch.full((fixed_point.ZERO_BLOCK + 5,), -7, dtype=torch.int64, device=DEVICE)
        amax = fixed_point.zero_and_bound(flat, grad)
        assert amax.shape == (parts,) and torch.equal(flat, torch.zeros_like(flat))
        assert amax.dtype == (torch.int64 if dtype == torch.float64 else torch.int32)
        assert max_abs(amax) == 3.0
        for bad in (float("nan"), float("-inf")):
            spoilt = grad.clone()
            spoilt[rng.integers(size)] = bad
            amax = fixed_point.zero_and_bound(flat, spoilt)
            assert max_abs(amax) == abs(bad) or np.isnan(bad)
            assert not np.isfinite(max_abs(amax))


@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_fixed_point_scale_follows_the_gradient(rng, mode):
    # the fixed-point scale is a power of two chosen from max |grad|: gradients 2**100
    # times larger or smaller give the same integers, so exactly scaled results
    x = on_device(rng.standard_normal((2, 3, 8, 8)), torch.float32)
    rois = on_device(random_rois(rng, 2, 6, 16, 16, min_size=2.0), torch.float32)
    grad = on_device(rng.standard_normal((6, 3, 2, 2)), torch.float32)
    base = backward_launch(mode, x, rois, grad, torch.empty_like(x))
    for factor in (2.0**100, 2.0**-100):
        scaled = backward_launch(mode, x, rois, grad * factor, torch.empty_like(x))
        assert torch.equal(scaled, base * factor)
    zero = backward_launch(mode, x, rois, torch.zeros_like(grad), torch.empty_like(x))
    assert torch.equal(zero, torch.zeros_like(x))


@pytest.mark.parametrize("bins,band", [(1, 0), (4, 0), (4, 2)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided view"])
def test_fixed_point_conversion_writes_every_cell(rng, layout, bins, band):
    # the conversion's tiles (a row's cells x channels) end inside the map on both axes:
    # 45 cells a row and 36 channels are not multiples of the 32 x 32 tile; any strides;
    # with bins (position-sensitive sums), accumulator channel p * 9 + c is channel c * 4 + p;
    # with bands (sums as differences), a cell's sum is the accumulator's over the cells
    # at or left of it in its row and at or above it in its band (rows 0-1, then row 2)
    from roiops.gpu.fixed_point import Accumulator

    n, c, h, w = 2, 36, 3, 45
    grad = on_device(rng.standard_normal((5, 3, 2, 2)), torch.float32)
    sums = Accumulator(grad, (n, c, h, w), bins=bins, band=band)
    acc = torch.from_numpy(rng.integers(-(2**40), 2**40, (n, h, w, c)))
    sums.acc.copy_(acc)
    if band:
        acc = acc.cumsum(2)
        acc = torch.cat([acc[:, :2].cumsum(1), acc[:, 2:]], dim=1)
    # what the kernel computes: acc * 2**-e with e from max |grad| (< 2**E) and the count
    bound = int(np.frexp(max_abs(sums.amax))[1])
    expected = (acc.double() * 2.0 ** -(62 - bound - sums.log2_count)).float()
    # [n, h, w, (p, c)] -> [n, (c, p), h, w]
    expected = expected.view(n, h, w, bins, c // bins).transpose(3, 4).reshape(n, h, w, c)
    expected = expected.permute(0, 3, 1, 2)
    if layout == "nchw":
        out = torch.full((n, c, h, w), float("nan"), device=DEVICE)
    elif layout == "channels_last":
        out = torch.full((n, c, h, w), float("nan"), device=DEVICE)
        out = out.contiguous(memory_format=torch.channels_last)
    else:
        out = torch.full((n, c + 3, h, w + 5), float("nan"), device=DEVICE)[:, 1:-2, :, 2:-3]
    written = sums.write_to(out)
    assert written is out
    assert torch.equal(out, expected.to(DEVICE))


@pytest.mark.parametrize(
    "mode,output_size",
    # (max mode's 14x14 bins in the slow run: the default suite is near its 10 minutes)
    [("avg", 7), ("max", 7), ("pool", 7), ("avg", 14), ("pool", 14)] + slow_cases(("max", 14)),
)
def test_whole_cell_boxes(rng, mode, output_size):
    # integer boxes whose sides are multiples of the bin count (ground-truth boxes often
    # are; roi_pool counts the end cell, so for it side + 1 is the multiple): bin edges
    # and adaptive sample counts are exact quotients, which an approximate division
    # would round to the next cell or sample
    sides = np.array([output_size, 2 * output_size, output_size - 1, 2 * output_size - 1])
    x1 = rng.integers(0, 4, len(sides)).astype(float)
    y1 = rng.integers(0, 4, len(sides)).astype(float)
    batch = np.array([0.0, 1.0, 0.0, 1.0])
    boxes = np.stack([batch, x1, y1, x1 + sides, y1 + sides], axis=1)
    rois = on_device(boxes, torch.float32)
    x = on_device(np.round(rng.standard_normal((2, 2, 32, 32)) * 2), torch.float32)
    grad = on_device(rng.standard_normal((len(sides), 2, output_size, output_size)), torch.float32)
    fast, ref = (
        run(b, mode, x, rois, output_size, 1.0, grad, 0, True) for b in ("triton", "reference")
    )
    assert_forward_matches(mode, fast[0], ref[0])
    torch.testing.assert_close(fast[1], ref[1], **TOL[torch.float32])


@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_pool_kernels_of_either_layout_agree(rng, channels_last):
    # roi_pool reads every map with its NHWC kernel (copying an NCHW map first); the NCHW
    # kernel stays for measuring which is faster: both give the reference's maxima and
    # the same argmax
    x = on_device(np.round(rng.standard_normal((2, 37, 9, 11)) * 2), torch.float32)  # ties
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = on_device(random_rois(rng, 2, 7, 18, 22), torch.float32)
    grad = on_device(rng.standard_normal((7, 37, 3, 4)), torch.float32)
    ref_out, _ = pool("reference", x, rois, (3, 4), 0.5, grad)
    nchw = gpu_pool.roi_pool_forward(x, rois, 0.5, 3, 4, nhwc=False)
    nhwc = gpu_pool.roi_pool_forward(x, rois, 0.5, 3, 4, nhwc=True)
    assert_forward_matches("pool", nchw[0], ref_out)
    assert_forward_matches("pool", nhwc[0], ref_out)
    assert torch.equal(nchw[1], nhwc[1])


def test_a_channel_major_argmax_has_a_permuted_tensor_s_strides():
    # roiops._layout.new_argmax allocates it with the strides (one call, not two): those
    # of a contiguous [K, C, ph, pw] permuted, size-0 dimensions included
    from roiops._layout import new_argmax

    like = torch.zeros(1, device=DEVICE)
    for shape in itertools.product((0, 1, 3), (0, 1, 4), (0, 1, 7), (0, 1, 3)):
        argmax = new_argmax(like, shape, channel_major=True)
        permuted = like.new_empty(shape, dtype=torch.int32).permute(0, 2, 3, 1)
        assert (argmax.shape, argmax.stride()) == (permuted.shape, permuted.stride()), shape
        assert argmax.dtype == torch.int32 and argmax.device == like.device
        assert new_argmax(like, shape, channel_major=False).is_contiguous()


@pytest.mark.parametrize("op", ["roi_pool", "roi_align_max"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_argmax_lies_as_its_kernel_writes_it(rng, op, channels_last):
    # the NCHW forward kernels store the argmax [K, ph, pw, C] channel-major (their lanes
    # run over one channel's bins: a contiguous store), the NHWC ones channels last; the
    # fake impl (torch.compile) gives the same strides; the backward reads either layout
    # or any other strides, to the same gradient
    x = on_device(np.round(rng.standard_normal((2, 37, 9, 11)) * 2), torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = on_device(random_rois(rng, 2, 7, 18, 22), torch.float32)
    grad = on_device(rng.standard_normal((7, 37, 3, 2)), torch.float32)
    forward = getattr(torch.ops.roiops, op)
    args = (x, rois, 0.5, 3, 2) if op == "roi_pool" else (x, rois, 0.5, 3, 2, 2, True)
    with roiops.use_backend("triton"):
        _, argmax = forward(*args)
        with torch._subclasses.fake_tensor.FakeTensorMode() as fake:
            fakes = [fake.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            _, fake_argmax = forward(*fakes)
        assert fake_argmax.stride() == argmax.stride()
        assert argmax.is_contiguous() == channels_last
        assert argmax.permute(0, 3, 1, 2).is_contiguous() == (not channels_last)
        spaced = torch.full((14, 3, 2, 37), 7, dtype=torch.int32, device=DEVICE)[::2]
        grads = []
        for a in (argmax, argmax.contiguous(), spaced.copy_(argmax)):
            if op == "roi_pool":
                g = torch.ops.roiops.roi_pool_backward(grad, a, rois, 0.5, 2, 37, 9, 11)
                grads.append((g,))
            else:
                g = torch.ops.roiops.roi_align_backward(
                    grad, rois, 0.5, 3, 2, 2, True, 2, 37, 9, 11, a
                )
                box = torch.ops.roiops.roi_align_box_backward(grad, x, rois, 0.5, 3, 2, 2, True, a)
                grads.append((g, box))
    for other in grads[1:]:
        for got, first in zip(other, grads[0], strict=True):
            assert torch.equal(got, first)
    assert grads[0][0].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", ["avg", "max", "pool"])
def test_channels_last_input_read_as_it_lies(rng, mode, dtype):
    # channels_last feature maps go to the NHWC forward kernels (lanes over channels),
    # with no copy to NCHW: the same outputs as the reference
    x = on_device(np.round(rng.standard_normal((2, 37, 9, 11)) * 2), dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    assert gpu_tiles.is_channels_last(x)
    rois = on_device(random_rois(rng, 2, 7, 18, 22), torch.float32)
    grad = on_device(rng.standard_normal((7, 37, 3, 2)), dtype)
    fast, ref = (
        run(b, mode, x, rois, (3, 2), 0.5, grad, 0, False) for b in ("triton", "reference")
    )
    if dtype == torch.bfloat16:  # the interpreter rounds float32 -> bfloat16 by truncation
        torch.testing.assert_close(fast[0], ref[0], rtol=1e-2, atol=1e-2)
        return
    assert_forward_matches(mode, fast[0], ref[0])
    torch.testing.assert_close(fast[1], ref[1], **TOL[dtype])


def position_sensitive_case(rng, output_size, channels_last=False):
    """(x, rois, grad) for a position-sensitive op: 3 output channels, 8 RoIs."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    x = on_device(rng.standard_normal((2, 3 * oh * ow, 9, 11)), torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = on_device(random_rois(rng, 2, 8, 18, 22), torch.float32)
    return x, rois, on_device(rng.standard_normal((8, 3, oh, ow)), torch.float32)


def triton_and_reference(fn, x, grad):
    """[(output, input gradient)] of ``fn(x)`` on the triton, then the reference backend."""
    results = []
    for backend in ("triton", "reference"):
        xb = x.detach().clone().requires_grad_()
        with roiops.use_backend(backend):
            out = fn(xb)
            out.backward(grad)
        results.append((out.detach(), xb.grad))
    return results


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ratio,output_size", [(0, (3, 2)), (2, 2)])
def test_ps_roi_align_matches_reference(rng, ratio, output_size, channels_last):
    # position-sensitive: the roi_align kernels with each bin reading its own channel
    x, rois, grad = position_sensitive_case(rng, output_size, channels_last)
    (out, gx), (ref_out, ref_gx) = triton_and_reference(
        lambda t: roiops.ps_roi_align(t, rois, output_size, 0.5, ratio), x, grad
    )
    assert_forward_matches("avg", out, ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


@pytest.mark.parametrize("ratio,span", [(2, 8), (2, 2), (0, 8), (0, 2)])
def test_ps_roi_align_backward_by_lanes_changes_no_bit(rng, monkeypatch, ratio, span):
    # a RoI's (bin, channel) outputs in the lanes of a program (PS_LANES) or a program
    # per bin: the same contributions, so the same bits; with invalid RoIs, an adaptive
    # sampling grid, and windows of 2 cells (several per bin); the reference's gradient
    # within float rounding, a channels_last gradient written the same
    monkeypatch.setattr(gpu_align, "SPAN", span)
    x, rois, grad = position_sensitive_case(rng, (3, 2))
    rois = torch.cat([rois, on_device(np.array(BAD_ROIS[:4]), torch.float32)])
    grad = torch.cat([grad, on_device(rng.standard_normal((4, 3, 3, 2)), torch.float32)])
    grad_input = []
    for lanes in (True, False):
        monkeypatch.setattr(gpu_align, "PS_LANES", lanes)
        gx = torch.full_like(x, float("nan"))
        grad_input.append(
            gpu_align.roi_align_backward(grad, rois, None, gx, 0.5, 3, 2, ratio, True, True)
        )
    assert torch.equal(grad_input[0], grad_input[1])
    with roiops.use_backend("reference"):
        ref = torch.ops.roiops.ps_roi_align_backward(grad[:8], rois[:8], 0.5, 3, 2, ratio, *x.shape)
    torch.testing.assert_close(grad_input[0], ref, **TOL[torch.float32])
    gx = torch.full_like(x, float("nan")).contiguous(memory_format=torch.channels_last)
    gx = gpu_align.roi_align_backward(grad, rois, None, gx, 0.5, 3, 2, ratio, True, True)
    assert torch.equal(gx, grad_input[0])


@pytest.mark.parametrize("output_size", [(3, 2), 2])
def test_ps_roi_pool_matches_reference(rng, output_size):
    x, rois, grad = position_sensitive_case(rng, output_size)
    (out, gx), (ref_out, ref_gx) = triton_and_reference(
        lambda t: roiops.ps_roi_pool(t, rois, output_size, 0.5), x, grad
    )
    # sums of cells and one IEEE division: no multiply-add to contract
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


def test_ps_roi_pool_kernels_take_any_roi_value(rng):
    x = on_device(rng.standard_normal((2, 8, 9, 11)), torch.float32)
    rois = on_device(np.concatenate([random_rois(rng, 2, 2, 18, 22), BAD_ROIS]), torch.float32)
    out = gpu_ps_pool.ps_roi_pool_forward(x, rois, 0.5, 2, 2)
    assert torch.isnan(out[2:]).all() and torch.isfinite(out[:2]).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_ps_pool.ps_roi_pool_backward(grad, rois, torch.empty_like(x), 0.5)
    with roiops.use_backend("reference"):
        ref = torch.ops.roiops.ps_roi_pool_backward(grad[:2], rois[:2], 0.5, 2, 2, 2, 8, 9, 11)
    torch.testing.assert_close(gx, ref, **TOL[torch.float32])


@pytest.mark.parametrize(
    "tile",
    # (the scatter in bands is off, BAND 0: its other cases in the slow run,
    # SLOW_ALTERNATIVES)
    [fixed_point.BAND_TILE, *slow_cases(64, 16)],
)
def test_ps_roi_pool_sums_as_differences_change_no_bit(rng, monkeypatch, tile):
    # the backward's scatter by the corners of each bin's rectangle, in bands of 1, 3 or
    # 8 rows (13 rows: the last band short; bins of up to 11 rows cross bands), is the
    # gradient of the scatter to every cell bit for bit (integer sums are exact), and the
    # reference's; so with invalid RoIs, empty bins, zero gradients, the last row and
    # column (which torchvision's bins never reach) and a channels_last gradient. Rows
    # longer than the conversion's tile (16 cells): the scatter goes cell by cell; a
    # tile of 64: 4 channels a program
    monkeypatch.setattr(fixed_point, "BAND_TILE", tile)
    n, c, h, w = shape = (2, 12, 13, 11 if tile > 16 else 17)
    assert fixed_point.Accumulator.takes_bands(shape) == (tile > 16)
    x = on_device(rng.standard_normal(shape), torch.float32)
    good = random_rois(rng, n, 12, 2 * h, 2 * w, min_size=-2.0, max_size=2 * h)
    rois = on_device(np.concatenate([good, BAD_ROIS[:3], [[0.0, 0, 0, 2 * w, 2 * h]]]),
                     torch.float32)  # fmt: skip
    grad = on_device(rng.standard_normal((len(rois), 3, 2, 2)), torch.float32)
    grad[:, 1] = 0.0
    grad_input = {}
    for band in (0, 1, 3, 8):
        monkeypatch.setattr(gpu_ps_pool, "BAND", band)
        for layout in (torch.contiguous_format, torch.channels_last):
            gx = torch.full_like(x, float("nan")).contiguous(memory_format=layout)
            grad_input[band, layout] = gpu_ps_pool.ps_roi_pool_backward(grad, rois, gx, 0.5)
    with roiops.use_backend("reference"):
        ref = torch.ops.roiops.ps_roi_pool_backward(grad[:12], rois[:12], 0.5, 2, 2, n, c, h, w)
        ref += torch.ops.roiops.ps_roi_pool_backward(grad[-1:], rois[-1:], 0.5, 2, 2, n, c, h, w)
    torch.testing.assert_close(grad_input[0, torch.contiguous_format], ref, **TOL[torch.float32])
    assert ref[:, :, :-1, :-1].abs().sum() > 0 and not ref[:, :, -1].any()
    for gx in grad_input.values():
        assert torch.equal(gx, grad_input[0, torch.contiguous_format])


@settings(max_examples=24, deadline=None)
@given(
    op=st.sampled_from(["ps_roi_pool", "ps_roi_align"]),
    c=st.integers(1, 2),
    oh=st.integers(1, 3),
    ow=st.integers(1, 3),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    k=st.integers(0, 5),
    ratio=st.integers(-1, 2),
    band=st.sampled_from([0, 1, 2, 8]),
    lanes=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_position_sensitive_triton_equals_reference(op, c, oh, ow, h, w, k, ratio,
                                                             band, lanes, seed):  # fmt: skip
    # any map, bin grid and boxes (degenerate and outside ones among them); ps_roi_pool's
    # backward scattered in bands of 1, 2 or 8 rows or cell by cell, ps_roi_align's by
    # lanes or by bin: the reference's forward (ps_roi_pool bit for bit) and gradient
    rng = np.random.default_rng(seed)
    x = on_device(rng.standard_normal((2, c * oh * ow, h, w)), torch.float32)
    rois = on_device(random_rois(rng, 2, k, 2 * h, 2 * w), torch.float32)
    grad = on_device(rng.standard_normal((k, c, oh, ow)), torch.float32)
    if op == "ps_roi_pool":
        module, settings, fn = gpu_ps_pool, {"BAND": band}, roiops.ps_roi_pool
        call = lambda t: fn(t, rois, (oh, ow), 0.5)  # noqa: E731
    else:
        module, settings, fn = gpu_align, {"PS_LANES": lanes}, roiops.ps_roi_align
        call = lambda t: fn(t, rois, (oh, ow), 0.5, ratio)  # noqa: E731
    before = {name: getattr(module, name) for name in settings}
    for name, value in settings.items():
        setattr(module, name, value)
    try:
        (out, gx), (ref_out, ref_gx) = triton_and_reference(call, x, grad)
    finally:
        for name, value in before.items():
            setattr(module, name, value)
    assert_forward_matches("pool" if op == "ps_roi_pool" else "avg", out, ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


@pytest.mark.parametrize("aligned,ratio", [(False, 2), (True, 0)])
def test_multi_scale_roi_align_matches_reference(rng, aligned, ratio):
    # every level in one launch: each program picks its RoI's level
    scales = [1 / 2, 1 / 4, 1 / 8]
    features = [
        on_device(rng.standard_normal((2, 3, 16 >> i, 20 >> i)), torch.float32) for i in range(3)
    ]
    rois = on_device(random_rois(rng, 2, 12, 32, 40), torch.float32)
    levels = torch.from_numpy(rng.integers(0, 3, 12)).to(DEVICE)
    grad = on_device(rng.standard_normal((12, 3, 2, 2)), torch.float32)
    assert_pyramid_matches_reference(
        lambda fs: roiops.multi_scale_roi_align(fs, rois, 2, scales, ratio, aligned, levels),
        features, grad,
    )  # fmt: skip


def assert_pyramid_matches_reference(fn, features, grad):
    """``fn(levels)`` (an average over a pyramid) and its levels' gradients for ``grad``
    on the triton backend are the reference's (``assert_forward_matches``, float32
    tolerances)."""
    results = []
    for backend in ("triton", "reference"):
        leaves = [f.detach().clone().requires_grad_() for f in features]
        with roiops.use_backend(backend):
            out = fn(leaves)
            out.backward(grad)
        results.append((out.detach(), [f.grad for f in leaves]))
    (out, grads), (ref_out, ref_grads) = results
    assert_forward_matches("avg", out, ref_out)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **TOL[torch.float32])


def test_multi_scale_kernel_takes_any_level(rng):
    from roiops.gpu import multi_scale_roi_align as gpu_fpn

    features = [
        on_device(rng.standard_normal((1, 2, 8 >> i, 8 >> i)), torch.float32) for i in range(2)
    ]
    rois = on_device(random_rois(rng, 1, 4, 16, 16, min_size=2), torch.float32)
    levels = torch.tensor([0, 5, -1, 1], device=DEVICE)
    out = gpu_fpn.multi_scale_roi_align_forward(features, rois, levels, [0.5, 0.25], 2, 2, 2, True)
    assert torch.isnan(out[1:3]).all() and torch.isfinite(out[[0, 3]]).all()


@pytest.mark.parametrize(
    "ratio,kw",
    [(2, {}), (0, {}), (1, {"aligned": False, "angle_unit": "radians", "clockwise": True})],
)
def test_roi_align_rotated_matches_reference(rng, ratio, kw):
    from test_roi_align_rotated import rotated_rois

    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    degrees = kw.get("angle_unit", "degrees") == "degrees"
    rois = on_device(rotated_rois(rng, 2, 8, 18, 22, degrees), torch.float32)
    grad = on_device(rng.standard_normal((8, 3, 2, 3)), torch.float32)
    (out, gx), (ref_out, ref_gx) = triton_and_reference(
        lambda t: roiops.roi_align_rotated(t, rois, (2, 3), 0.5, ratio, **kw), x, grad
    )
    assert_forward_matches("avg", out, ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


def test_roi_align_rotated_kernels_take_any_roi_value(rng):
    from roiops.gpu import roi_align_rotated as gpu_rotated

    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    rois = on_device(
        [[0, 5.0, 5, 4, 4, 30], [2, 5, 5, 4, 4, 0], [0, 5, 5, -1, 4, 0], [0, 5, 5, 4, 4, np.inf],
         [1, np.nan, 5, 4, 4, 0], [1, 6, 4, 6, 2, -45]],
        torch.float32,
    )  # fmt: skip
    out = gpu_rotated.roi_align_rotated_forward(x, rois, 1.0, 2, 2, 2, True, True, False)
    assert torch.isnan(out[1:5]).all() and torch.isfinite(out[[0, 5]]).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_rotated.roi_align_rotated_backward(
        grad, rois, torch.empty_like(x), 1.0, 2, 2, 2, True, True, False
    )
    good = rois[[0, 5]]
    with roiops.use_backend("reference"):
        ref = torch.ops.roiops.roi_align_rotated_backward(
            grad[[0, 5]], good, 1.0, 2, 2, 2, True, True, False, 2, 3, 9, 11
        )
    torch.testing.assert_close(gx, ref, **TOL[torch.float32])


def test_riroi_align_rotated_matches_reference(rng):
    # ReDet's rotation-invariant RoIAlign: the rotated kernels (mmcv's legacy convention,
    # radians, clockwise) and the orientation turn
    from test_roi_align_rotated import rotated_rois

    x = on_device(rng.standard_normal((2, 8, 9, 11)), torch.float32)
    rois = on_device(rotated_rois(rng, 2, 8, 18, 22, False), torch.float32)
    grad = on_device(rng.standard_normal((8, 8, 2, 3)), torch.float32)
    (out, gx), (ref_out, ref_gx) = triton_and_reference(
        lambda t: roiops.riroi_align_rotated(t, rois, (2, 3), 0.5, 0, 4, True), x, grad
    )
    # (the reference backend runs the per-point spec: the two steps round otherwise)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float32])
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_orientation_turn_kernel_is_torch_s_gathers(rng, dtype):
    # the turn's kernel (shift and weights from each angle in the kernel) against its torch
    # formulation, forward and backward, for any angle: several turns both ways, and
    # non-finite or huge ones (read in bounds; NaN outputs for the non-finite)
    from roiops.ops.riroi_align_rotated import turn, turn_backward

    pooled = on_device(rng.standard_normal((12, 24, 3, 3)), dtype)
    angles = rng.uniform(-20, 20, 12)
    angles[:6] = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e18]
    rois = on_device(np.zeros((12, 6)), torch.float32 if dtype == torch.float16 else dtype)
    rois[:, 5] = torch.from_numpy(angles).to(rois)
    for orientations in (1, 3, 8):
        for step in (turn, turn_backward):
            with roiops.use_backend("triton"):
                got = step(pooled, rois[:, 5], orientations)
            with roiops.use_backend("reference"):
                expected = step(pooled, rois[:, 5], orientations)
            assert got.dtype == expected.dtype
            assert got[:3].isnan().all() and got[3:].isfinite().all()
            assert torch.equal(got[3:], expected[3:])


def test_roi_align_rotated_absurd_adaptive_grid_makes_a_roi_invalid(rng):
    from roiops.gpu import roi_align_rotated as gpu_rotated

    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    rois = on_device([[0, 5.0, 5, 4, 4, 30], [1, 5, 5, 3e5, 4, 10], [0, 5, 5, 4, 1e30, 0],
                      [1, 6, 4, 6, 2, -45]], torch.float32)  # fmt: skip
    out = gpu_rotated.roi_align_rotated_forward(x, rois, 1.0, 2, 2, 0, True, True, False)
    assert torch.isnan(out[1:3]).all() and torch.isfinite(out[[0, 3]]).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_rotated.roi_align_rotated_backward(
        grad, rois, torch.empty_like(x), 1.0, 2, 2, 0, True, True, False
    )
    with roiops.use_backend("reference"):
        ref = torch.ops.roiops.roi_align_rotated_backward(
            grad[[0, 3]], rois[[0, 3]], 1.0, 2, 2, 0, True, True, False, 2, 3, 9, 11
        )
    torch.testing.assert_close(gx, ref, **TOL[torch.float32])


@pytest.mark.parametrize("ratio,kw", [(2, {}), (0, {"angle_unit": "radians", "clockwise": True})])
def test_multi_scale_roi_align_rotated_matches_reference(rng, ratio, kw):
    # detectron2's ROIAlignRotated pooler: every level in one launch, rotated bodies
    from test_roi_align_rotated import rotated_rois

    scales = [1 / 2, 1 / 4, 1 / 8]
    features = [
        on_device(rng.standard_normal((2, 3, 16 >> i, 20 >> i)), torch.float32) for i in range(3)
    ]
    degrees = kw.get("angle_unit", "degrees") == "degrees"
    rois = on_device(rotated_rois(rng, 2, 12, 32, 40, degrees), torch.float32)
    levels = torch.from_numpy(rng.integers(0, 3, 12)).to(DEVICE)
    grad = on_device(rng.standard_normal((12, 3, 2, 3)), torch.float32)
    assert_pyramid_matches_reference(
        lambda fs: roiops.multi_scale_roi_align_rotated(
            fs, rois, (2, 3), scales, ratio, levels=levels, **kw
        ),
        features, grad,
    )  # fmt: skip


def test_multi_scale_rotated_kernels_take_any_level_and_roi_value(rng):
    from roiops.gpu import multi_scale_roi_align as gpu_fpn

    features = [
        on_device(rng.standard_normal((2, 3, 10 >> i, 12 >> i)), torch.float32) for i in range(2)
    ]
    rois = on_device(
        [[0, 5.0, 5, 4, 4, 30], [1, 5, 5, 4, 4, 0], [0, 5, 5, 4, 4, 0], [2, 5, 5, 4, 4, 0],
         [0, 5, 5, -1, 4, 0], [1, np.nan, 5, 4, 4, 0], [1, 6, 4, 6, 2, -45]],
        torch.float32,
    )  # fmt: skip
    levels = torch.tensor([0, 5, -1, 1, 0, 1, 1], device=DEVICE)
    scales = [0.5, 0.25]
    out = gpu_fpn.multi_scale_roi_align_rotated_forward(
        features, rois, levels, scales, 2, 2, 2, True, True, False
    )
    good = [0, 6]
    assert torch.isnan(out[1:6]).all() and torch.isfinite(out[good]).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    grads = gpu_fpn.multi_scale_roi_align_rotated_backward(
        grad, rois, levels, scales, [torch.empty_like(f) for f in features], 2, True, True, False
    )
    with roiops.use_backend("reference"):
        refs = torch.ops.roiops.multi_scale_roi_align_rotated_backward(
            grad[good], rois[good], levels[good], scales, 2, 2, 2, True, True, False, 2, 3,
            [10, 5], [12, 6],
        )  # fmt: skip
    for g, r in zip(grads, refs, strict=True):
        torch.testing.assert_close(g, r, **TOL[torch.float32])


@pytest.mark.parametrize(
    "aligned,ratio,mode", [(True, 2, "avg"), (False, 0, "avg"), (True, 2, "max")]
)
def test_box_gradient_matches_reference(rng, aligned, ratio, mode):
    from test_roi_align import box_lists

    x = on_device(rng.standard_normal((2, 5, 10, 12)), torch.float64)
    results = []
    for backend in ("triton", "reference"):
        boxes = [b.to(DEVICE).requires_grad_() for b in box_lists()]
        with roiops.use_backend(backend):
            out = roiops.roi_align(x, boxes, (3, 2), 0.5, ratio, aligned, mode)
            grads = torch.autograd.grad(out, boxes, torch.ones_like(out))
        results.append(torch.cat(grads))
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-9)


def test_prroi_pool_matches_reference(rng):
    from test_prroi_pool import box_lists

    x = on_device(rng.standard_normal((2, 3, 8, 9)), torch.float64)
    grad = on_device(rng.standard_normal((5, 3, 2, 3)), torch.float64)
    results = []
    for backend in ("triton", "reference"):
        xb = x.clone().requires_grad_()
        boxes = [b.to(DEVICE).requires_grad_() for b in box_lists()]
        with roiops.use_backend(backend):
            out = roiops.prroi_pool(xb, boxes, (2, 3), 0.5)
            out.backward(grad)
        results.append((out.detach(), xb.grad, torch.cat([b.grad for b in boxes])))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, **TOL[torch.float64])


def test_prroi_pool_boxes_far_past_the_map(rng):
    # the kernels visit only the cells that can add (-1 to H - 1), with their loop bounds
    # clamped before the conversion to int: boxes reaching far past the map, 1e12 px
    # too, give the reference's integrals and gradients (they looped over every cell)
    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float64)
    rois = on_device([[0, -60, -50, 80, 70], [1, -1e12, 3, 1e12, 9], [1, 2.5, -61, 13.5, 1e12]],
                     torch.float64)  # fmt: skip
    grad = on_device(rng.standard_normal((3, 3, 3, 2)), torch.float64)
    results = []
    for backend in ("triton", "reference"):
        xb, rb = x.clone().requires_grad_(), rois.clone().requires_grad_()
        with roiops.use_backend(backend):
            out = roiops.prroi_pool(xb, rb, (3, 2), 0.5)
            out.backward(grad)
        results.append((out.detach(), xb.grad, rb.grad))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, **TOL[torch.float64])


def test_prroi_pool_kernels_take_any_roi_value(rng):
    from roiops.gpu import prroi_pool as gpu_prroi

    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    rois = on_device(np.concatenate([random_rois(rng, 2, 2, 18, 22, min_size=2), BAD_ROIS]),
                     torch.float32)  # fmt: skip
    out = gpu_prroi.prroi_pool_forward(x, rois, 0.5, 2, 2)
    assert torch.isnan(out[2:]).all() and torch.isfinite(out[:2]).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_prroi.prroi_pool_backward(grad, rois, torch.empty_like(x), 0.5)
    with roiops.use_backend("reference"):
        ref = torch.ops.roiops.prroi_pool_backward(grad[:2], rois[:2], 0.5, 2, 2, 2, 3, 9, 11)
    torch.testing.assert_close(gx, ref, **TOL[torch.float32])


def test_multi_scale_roi_pool_matches_reference(rng):
    scales = [1 / 2, 1 / 4, 1 / 8]
    features = [
        on_device(np.round(rng.standard_normal((2, 3, 16 >> i, 20 >> i)) * 2), torch.float32)
        for i in range(3)
    ]
    rois = on_device(random_rois(rng, 2, 12, 32, 40), torch.float32)
    levels = torch.from_numpy(rng.integers(0, 3, 12)).to(DEVICE)
    grad = on_device(rng.standard_normal((12, 3, 2, 2)), torch.float32)
    results = []
    for backend in ("triton", "reference"):
        leaves = [f.detach().clone().requires_grad_() for f in features]
        with roiops.use_backend(backend):
            out = roiops.multi_scale_roi_pool(leaves, rois, 2, scales, levels=levels)
            out.backward(grad)
        results.append((out.detach(), [f.grad for f in leaves]))
    (out, grads), (ref_out, ref_grads) = results
    assert torch.equal(out, ref_out)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, **TOL[torch.float32])


@pytest.fixture
def small_program_blocks(monkeypatch):
    """Program sizes small enough that the tests' few channels take several programs a
    RoI (blocks of outputs or of channels), so that the program order has orders to
    differ in; the caches of grids and launches are emptied before and after."""
    sizes = dict(FORWARD_BLOCK=4, ADAPTIVE_FORWARD_BLOCK=4, NHWC_FORWARD_CHANNELS=4,
                 BACKWARD_CHANNELS=4, ARGMAX_TILE=8)  # fmt: skip
    for name, value in sizes.items():
        monkeypatch.setattr(gpu_tiles, name, value)
    gpu_tiles.clear_caches()
    yield
    monkeypatch.undo()
    gpu_tiles.clear_caches()


def program_order_cases(rng):
    """{name: fn(backend) -> [output, input gradients...]}, every Triton kernel that
    takes its RoI and block from the program order, through the public functions."""
    x = on_device(rng.standard_normal((2, 8, 8, 10)), torch.float32)
    rois = on_device(random_rois(rng, 2, 4, 16, 20, min_size=1.0), torch.float32)
    features = [
        on_device(rng.standard_normal((2, 8, 16 >> i, 20 >> i)), torch.float32) for i in range(3)
    ]
    levels = torch.from_numpy(rng.integers(0, 3, 4)).to(DEVICE)
    from test_roi_align_rotated import rotated_rois

    rotated = on_device(rotated_rois(rng, 2, 4, 16, 20, True), torch.float32)
    offset = on_device(rng.standard_normal((4, 2, 2, 2)), torch.float32)
    from roiops.bench import random_beziers

    beziers = on_device(random_beziers(rng, 2, 4, 16, 20), torch.float32)

    def through(fn, inputs):
        def run_on(backend):
            leaves = [t.detach().clone().requires_grad_() for t in inputs]
            with roiops.use_backend(backend):
                out = fn(*leaves)
                out.backward(torch.from_numpy(np.random.default_rng(1).standard_normal(
                    out.shape)).to(out))  # fmt: skip
            return [out.detach(), *[t.grad for t in leaves]]

        return run_on

    nhwc = x.contiguous(memory_format=torch.channels_last)
    return {
        "roi_align avg": through(lambda t: roiops.roi_align(t, rois, 2, 0.5, 2, True), [x]),
        "roi_align avg adaptive": through(lambda t: roiops.roi_align(t, rois, 2, 0.5, 0), [x]),
        "roi_align max": through(lambda t: roiops.roi_align(t, rois, 2, 0.5, 2, True, "max"), [x]),
        "roi_align onnx_max": through(
            lambda t: roiops.roi_align(t, rois, 2, 0.5, 2, False, "onnx_max"), [x]
        ),
        "roi_align channels_last": through(
            lambda t: roiops.roi_align(t, rois, 2, 0.5, 2, True), [nhwc]
        ),
        "roi_pool": through(lambda t: roiops.roi_pool(t, rois, 2, 0.5), [x]),
        "roi_pool channels_last": through(lambda t: roiops.roi_pool(t, rois, 2, 0.5), [nhwc]),
        "ps_roi_align": through(lambda t: roiops.ps_roi_align(t, rois, 2, 0.5, 2), [x]),
        "ps_roi_pool": through(lambda t: roiops.ps_roi_pool(t, rois, 2, 0.5), [x]),
        "multi_scale_roi_align": through(
            lambda *f: roiops.multi_scale_roi_align(
                list(f), rois, 2, [1 / 2, 1 / 4, 1 / 8], 2, True, levels
            ),
            features,
        ),
        "multi_scale_roi_pool": through(
            lambda *f: roiops.multi_scale_roi_pool(
                list(f), rois, 2, [1 / 2, 1 / 4, 1 / 8], levels=levels
            ),
            features,
        ),
        "roi_align_rotated": through(
            lambda t: roiops.roi_align_rotated(t, rotated, 2, 0.5, 2), [x]
        ),
        "multi_scale_roi_align_rotated": through(
            lambda *f: roiops.multi_scale_roi_align_rotated(
                list(f), rotated, 2, [1 / 2, 1 / 4, 1 / 8], 2, levels=levels
            ),
            features,
        ),
        "prroi_pool": through(lambda t: roiops.prroi_pool(t, rois, 2, 0.5), [x]),
        "deform_roi_pool": through(
            lambda t, o: roiops.deform_roi_pool(t, rois, o, 2, 0.5, 0), [x, offset]
        ),
        "bezier_align": through(lambda t: roiops.bezier_align(t, beziers, 2, 0.5, 0), [x]),
        "simple_roi_align": through(lambda t: roiops.simple_roi_align(t, rois, 2, 0.5), [x]),
    }


# every op whose kernels take their RoI from the program id (through bins_tile,
# bin_channels_tile or roi_channels_tile), forward and backward (2-9 s a case through
# the interpreter)
PROGRAM_ORDER_CASES = [
    "roi_align avg", "roi_pool", "roi_pool channels_last", "ps_roi_align", "ps_roi_pool",
    "multi_scale_roi_pool", "roi_align avg adaptive",
    "roi_align max", "roi_align onnx_max", "roi_align channels_last", "multi_scale_roi_align",
    "roi_align_rotated", "multi_scale_roi_align_rotated", "prroi_pool", "deform_roi_pool",
    "bezier_align", "simple_roi_align",
]  # fmt: skip


@pytest.mark.parametrize("case", PROGRAM_ORDER_CASES)
def test_program_order_changes_no_bit(rng, monkeypatch, small_program_blocks, case):
    # RoIs innermost (tiles.GATHER_ROIS_INNER / SCATTER_ROIS_INNER / ADAPTIVE_ROIS_INNER,
    # an adaptive grid's forward) only changes which
    # programs run together: every output, and every input gradient (integer sums), is
    # the same bits as RoI-major; and the reference's, within float rounding
    fn = program_order_cases(rng)[case]
    results = {}
    for rois_inner in (False, True):
        monkeypatch.setattr(gpu_tiles, "GATHER_ROIS_INNER", rois_inner)
        monkeypatch.setattr(gpu_tiles, "SCATTER_ROIS_INNER", rois_inner)
        monkeypatch.setattr(gpu_tiles, "ADAPTIVE_ROIS_INNER", rois_inner)
        results[rois_inner] = fn("triton")
    for major, inner in zip(results[False], results[True], strict=True):
        assert torch.equal(major, inner)
    for got, expected in zip(results[True], fn("reference"), strict=True):
        torch.testing.assert_close(got, expected, **TOL[torch.float32])


def deform_case(rng, k=8):
    """(x [2, 3, 9, 11], rois [k, 5], offsets [k, 2, 2, 3] up to about a RoI, output
    gradient) for the deformable pooling kernels."""
    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    rois = on_device(random_rois(rng, 2, k, 18, 22), torch.float32)
    offset = on_device(rng.standard_normal((k, 2, 2, 3)) * 3, torch.float32)
    grad = on_device(rng.standard_normal((k, 3, 2, 3)), torch.float32)
    return x, rois, offset, grad


def deform_results(x, rois, offset, grad, ratio):
    """[(output, input gradient, offset gradient)] on the triton, then the reference
    backend."""
    results = []
    for backend in ("triton", "reference"):
        xb, ob = x.detach().clone().requires_grad_(), offset.detach().clone().requires_grad_()
        with roiops.use_backend(backend):
            out = roiops.deform_roi_pool(xb, rois, ob, (2, 3), 0.5, ratio, 0.2)
            out.backward(grad)
        results.append((out.detach(), xb.grad, ob.grad))
    return results


@pytest.mark.parametrize("ratio", [2, 0])
def test_deform_roi_pool_matches_reference(rng, ratio):
    x, rois, offset, grad = deform_case(rng)
    offset[2, 1, 1, 2] = float("nan")
    (out, gx, go), (ref_out, ref_gx, ref_go) = deform_results(x, rois, offset, grad, ratio)
    assert torch.isnan(out[2, :, 1, 2]).all() and torch.isnan(out).sum() == 3
    assert_forward_matches("avg", out.nan_to_num(7.0), ref_out.nan_to_num(7.0))
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])
    torch.testing.assert_close(go, ref_go, rtol=1e-5, atol=1e-4)  # (sums over channels)


def test_deform_roi_pool_kernels_take_any_roi_value(rng):
    from roiops.gpu import deform_roi_pool as gpu_deform

    x, _, offset, grad = deform_case(rng, k=6)
    rois = on_device([[0, 1.0, 1, 9, 7], [2, 1, 1, 9, 7], [0.5, 1, 1, 9, 7], [0, np.nan, 1, 9, 7],
                      [1, 1, 1, 4e5, 7], [1, 2, 3, 8, 9]], torch.float32)  # fmt: skip
    args = (0.5, 2, 3, 0, 0.2)
    out = gpu_deform.deform_roi_pool_forward(x, rois, offset, *args)
    assert torch.isnan(out[1:5]).all() and torch.isfinite(out[[0, 5]]).all()
    gx = gpu_deform.deform_roi_pool_backward(grad, rois, offset, torch.empty_like(x), *args)
    go = gpu_deform.deform_roi_pool_offset_backward(grad, x, rois, offset, *args)
    good = [0, 5]
    with roiops.use_backend("reference"):
        ref_gx = torch.ops.roiops.deform_roi_pool_backward(
            grad[good], rois[good], offset[good], *args, 2, 3, 9, 11
        )
        ref_go = torch.ops.roiops.deform_roi_pool_offset_backward(
            grad[good], x, rois[good], offset[good], *args
        )
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])
    assert go[1:5].eq(0).all()
    torch.testing.assert_close(go[good], ref_go, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crop_and_resize_matches_reference(rng, method, dtype):
    # TensorFlow's crop_and_resize: boxes in and past the image, flipped; crops of one
    # row, one column, and more; the extrapolation value outside
    x = on_device(rng.standard_normal((2, 3, 9, 11)), dtype)
    boxes = on_device(rng.uniform(-0.3, 1.3, (6, 4)), dtype)
    indices = torch.tensor([0, 1, 1, 0, 1, 0], device=DEVICE)
    for size in ((3, 4), (1, 5), (4, 1)):
        results = []
        for backend in ("triton", "reference"):
            xb, bb = x.clone().requires_grad_(), boxes.clone().requires_grad_()
            with roiops.use_backend(backend):
                out = roiops.crop_and_resize(xb, bb, indices, size, method, -1.5)
                g = torch.linspace(-1, 1, out.numel(), device=DEVICE, dtype=dtype)
                results.append((out.detach(), *torch.autograd.grad(out, [xb, bb], g.view(
                    out.shape))))  # fmt: skip
        (out, gx, gb), (ref, ref_gx, ref_gb) = results
        assert_forward_matches("avg", out, ref)
        torch.testing.assert_close(gx, ref_gx, **TOL[dtype])
        torch.testing.assert_close(gb, ref_gb, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-4 if dtype == torch.float32 else 1e-12)  # fmt: skip


def test_crop_and_resize_kernels_take_any_box_value(rng):
    from roiops.gpu import crop_and_resize as gpu_crop

    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    good = rng.uniform(-0.2, 1.2, (2, 5))
    good[:, 0] = [0, 1]
    rois = on_device(np.concatenate([good, BAD_ROIS, [[0, 1e38, 0, -1e38, 1]]]), torch.float32)
    out = gpu_crop.crop_and_resize_forward(x, rois, 3, 4, False, 0.0)
    # (huge coordinates are samples past the image: the extrapolation value)
    assert torch.isnan(out[2:-1]).all() and torch.isfinite(out[:2]).all()
    assert out[-1].eq(0).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_crop.crop_and_resize_backward(grad, rois, False, torch.empty_like(x))
    gb = gpu_crop.crop_and_resize_box_backward(grad, x, rois)
    with roiops.use_backend("reference"):
        ref_gx = torch.ops.roiops.crop_and_resize_backward(grad[:2], rois[:2], False, 2, 3, 9, 11)
        ref_gb = torch.ops.roiops.crop_and_resize_box_backward(grad[:2], x, rois[:2], False)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])
    assert gb[2:].eq(0).all()
    torch.testing.assert_close(gb[:2], ref_gb[:, 1:], rtol=1e-5, atol=1e-4)


def test_parameters_whose_bits_fit_in_32_bits_reach_the_kernels(rng):
    # a float parameter reaches the kernels as the bits of a float64; 0.0's (gamma 0,
    # trans_std 0, the originals' default) fit in 32 bits, which Triton passes as an
    # int32 (a bitcast to float64 failed to compile): no move, the unmoved numbers
    x, rois, offset, _ = deform_case(rng, k=4)
    with roiops.use_backend("triton"):
        still = roiops.deform_roi_pool(x, rois, offset, (2, 3), 0.5, 2, 0.0)
        plain = roiops.deform_roi_pool(x, rois, None, (2, 3), 0.5, 2)
        assert torch.equal(still, plain)
        moved = roiops.deform_ps_roi_pool(x, rois, offset[:, :, :1, :1], 2, 0.5, 1, 1, 2, 0.0)
        assert torch.equal(moved, roiops.deform_ps_roi_pool(x, rois, None, 2, 0.5, 1, 1, 2))


@pytest.mark.parametrize(
    "group,classes,pooled,part,dtype",
    [(1, 1, 3, 3, torch.float32), (3, 1, 3, 3, torch.float32), (1, 2, (2, 3), 2, torch.float32),
     (2, 0, 4, 2, torch.float32), (1, 1, 3, 3, torch.float64)],
)  # fmt: skip
def test_deform_ps_roi_pool_matches_reference(rng, group, classes, pooled, part, dtype):
    # Deformable ConvNets' own pooling: plain, position-sensitive, class-wise offsets in
    # coarser parts, none; boxes past the map and degenerate (at least 0.1 cell: in
    # float64 0.1 itself, not float32's)
    x = on_device(rng.standard_normal((2, 4 * group * group, 9, 11)), dtype)
    rois = on_device(random_rois(rng, 2, 8, 18, 22), dtype)
    rois[0, 1:] = torch.tensor([4.0, 4.0, 2.0, 2.0])  # (inverted: 0.1 cell a side)
    offset = None
    if classes:
        offset = on_device(rng.standard_normal((8, 2 * classes, part, part)), dtype)
    part_arg = part if isinstance(pooled, tuple) else None
    results = []
    for backend in ("triton", "reference"):
        leaves = [x.detach().clone().requires_grad_()]
        if offset is not None:
            leaves.append(offset.detach().clone().requires_grad_())
        with roiops.use_backend(backend):
            out = roiops.deform_ps_roi_pool(leaves[0], rois, leaves[1] if classes else None,
                                            pooled, 0.5, group, part_arg, 3, 0.3)  # fmt: skip
            g = torch.linspace(-1, 1, out.numel(), device=DEVICE, dtype=dtype).reshape(out.shape)
            results.append((out.detach(), *torch.autograd.grad(out, leaves, g)))
    (out, *grads), (ref_out, *ref_grads) = results
    assert_forward_matches("avg", out, ref_out)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_deform_ps_roi_pool_kernels_take_any_roi_value(rng):
    from roiops.gpu import deform_ps_roi_pool as gpu_dps

    x = on_device(rng.standard_normal((2, 3, 9, 11)), torch.float32)
    good = random_rois(rng, 2, 2, 18, 22)
    rois = on_device(np.concatenate([good, BAD_ROIS]), torch.float32)
    offset = on_device(rng.standard_normal((len(rois), 2, 2, 2)), torch.float32)
    offset[1, 1, 0, 1] = float("nan")  # (a good RoI's bin with a bad offset)
    args = (0.5, 2, 2, 2, 1, 2, 0.1)
    out = gpu_dps.deform_ps_roi_pool_forward(x, rois, offset, *args)
    nan = torch.zeros_like(out, dtype=torch.bool)
    nan[2:] = True
    nan[1, :, 0, 1] = True
    assert torch.equal(torch.isnan(out), nan)
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_dps.deform_ps_roi_pool_backward(grad, rois, offset, torch.empty_like(x), *args)
    go = gpu_dps.deform_ps_roi_pool_offset_backward(grad, x, rois, offset, *args)
    quiet_grad, quiet_offset = grad[:2].clone(), offset[:2].clone()
    quiet_grad[1, :, 0, 1] = 0
    quiet_offset[1, 1, 0, 1] = 0
    with roiops.use_backend("reference"):
        ref_gx = torch.ops.roiops.deform_ps_roi_pool_backward(
            quiet_grad, rois[:2], quiet_offset, *args, 2, 3, 9, 11
        )
        ref_go = torch.ops.roiops.deform_ps_roi_pool_offset_backward(
            quiet_grad, x, rois[:2], quiet_offset, *args
        )
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])
    assert go[2:].eq(0).all() and go[1, :, 0, 1].eq(0).all()
    torch.testing.assert_close(go[:2], ref_go, rtol=1e-5, atol=1e-5)
    # boxes whose scaled corners or sides overflow float32 (at scale 2)
    wide = on_device(np.concatenate([good, OVERFLOWING_ROIS]), torch.float32)
    out = gpu_dps.deform_ps_roi_pool_forward(x, wide, offset[: len(wide)].nan_to_num(), 2.0,
                                             *args[1:])  # fmt: skip
    assert torch.isnan(out[2:]).all() and torch.isfinite(out[:2]).all()


@pytest.mark.parametrize("ratio,aligned", [(2, True), (0, False)])
def test_bezier_align_matches_reference(rng, ratio, aligned):
    from roiops.bench import random_beziers

    x = on_device(rng.standard_normal((2, 3, 12, 14)), torch.float32)
    beziers = on_device(random_beziers(rng, 2, 8, 24, 28), torch.float32)
    grad = on_device(rng.standard_normal((8, 3, 2, 5)), torch.float32)
    (out, gx), (ref_out, ref_gx) = triton_and_reference(
        lambda t: roiops.bezier_align(t, beziers, (2, 5), 0.5, ratio, aligned), x, grad
    )
    assert_forward_matches("avg", out, ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


def test_bezier_align_kernels_take_any_roi_value(rng):
    from roiops.bench import random_beziers
    from roiops.gpu import bezier_align as gpu_bezier

    x = on_device(rng.standard_normal((2, 3, 12, 14)), torch.float32)
    beziers = on_device(random_beziers(rng, 2, 6, 24, 28), torch.float32)
    beziers[1, 0] = 2  # batch index out of range
    beziers[2, 0] = 0.5  # not whole
    beziers[3, 6] = float("nan")
    beziers[4, 7] = 3e6  # an adaptive grid of a million points a bin
    out = gpu_bezier.bezier_align_forward(x, beziers, 0.5, 2, 2, 0, True)
    assert torch.isnan(out[1:5]).all() and torch.isfinite(out[[0, 5]]).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_bezier.bezier_align_backward(grad, beziers, torch.empty_like(x), 0.5, 2, 2, 0, True)
    good = [0, 5]
    with roiops.use_backend("reference"):
        ref = torch.ops.roiops.bezier_align_backward(
            grad[good], beziers[good], 0.5, 2, 2, 0, True, 2, 3, 12, 14
        )
    torch.testing.assert_close(gx, ref, **TOL[torch.float32])


@pytest.mark.parametrize("aligned", [True, False])
def test_simple_roi_align_matches_reference(rng, aligned):
    # boxes over and past the map's edges: the zero padding at every border
    x = on_device(rng.standard_normal((2, 3, 12, 14)), torch.float32)
    rois = on_device(random_rois(rng, 2, 10, 28, 32, min_size=0.0), torch.float32)
    rois[:, 1:] -= 2
    grad = on_device(rng.standard_normal((10, 3, 4, 5)), torch.float32)
    (out, gx), (ref_out, ref_gx) = triton_and_reference(
        lambda t: roiops.simple_roi_align(t, rois, (4, 5), 0.5, aligned), x, grad
    )
    assert_forward_matches("avg", out, ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


@pytest.mark.parametrize("shared", [False, True])
def test_roi_point_sample_matches_reference(rng, shared):
    # points inside and outside their boxes, each RoI's own or one set for all
    x = on_device(rng.standard_normal((2, 3, 12, 14)), torch.float32)
    rois = on_device(random_rois(rng, 2, 10, 28, 32, min_size=0.0), torch.float32)
    uv = on_device(rng.uniform(-0.3, 1.3, (1 if shared else 10, 7, 2)), torch.float32)
    grad = on_device(rng.standard_normal((10, 3, 7)), torch.float32)
    (out, gx), (ref_out, ref_gx) = triton_and_reference(
        lambda t: roiops.roi_point_sample(t, rois, uv, 0.5), x, grad
    )
    assert_forward_matches("avg", out, ref_out)
    torch.testing.assert_close(gx, ref_gx, **TOL[torch.float32])


def test_roi_point_sample_kernels_take_any_roi_value(rng):
    from roiops.gpu import roi_point_sample as gpu_points

    x = on_device(rng.standard_normal((2, 3, 12, 14)), torch.float32)
    rois = on_device(random_rois(rng, 2, 6, 24, 28), torch.float32)
    rois[1, 0] = 2  # batch index out of range
    rois[2, 0] = 0.5  # not whole
    rois[3, 2] = float("nan")
    rois[4, 3] = float("inf")
    uv = on_device(rng.uniform(0, 1, (6, 6, 2)), torch.float32)
    out = gpu_points.roi_point_sample_forward(x, rois, uv, 0.5, True)
    assert torch.isnan(out[1:5]).all() and torch.isfinite(out[[0, 5]]).all()
    grad = on_device(rng.standard_normal(out.shape), torch.float32)
    gx = gpu_points.roi_point_sample_backward(grad, rois, uv, torch.empty_like(x), 0.5, True)
    good = [0, 5]
    with roiops.use_backend("reference"):
        ref = torch.ops.roiops.roi_point_sample_backward(
            grad[good], rois[good], uv[good], 0.5, True, 2, 3, 12, 14
        )
    torch.testing.assert_close(gx, ref, **TOL[torch.float32])
