"""Bad input gets a clear Python exception naming the argument, on every op."""

import os
import subprocess
import sys

import pytest
import torch
from torch import Tensor

import roiops

X = torch.randn(2, 3, 8, 8)
ROIS = torch.tensor([[0, 1.0, 1, 6, 6], [1, 0.0, 0, 4, 4]])


def align(**kw):
    args = dict(input=X, boxes=ROIS, output_size=2, spatial_scale=1.0, sampling_ratio=2)
    args.update(kw)
    return roiops.roi_align(**args)


def pool(**kw):
    args = dict(input=X, boxes=ROIS, output_size=2, spatial_scale=1.0)
    args.update(kw)
    return roiops.roi_pool(**args)


OPS = [align, pool]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(
    "kw,error,match",
    [
        (dict(input=torch.randn(3, 8, 8)), ValueError, "input must be 4-D"),
        (dict(input=torch.ones(2, 3, 8, 8, dtype=torch.int64)), TypeError, "input must be float"),
        (dict(input=[[1.0]]), TypeError, "input must be a torch.Tensor"),
        (dict(boxes=torch.zeros(2, 4)), ValueError, r"boxes as a Tensor must have shape \[K, 5\]"),
        (dict(boxes=torch.zeros(5)), ValueError, "boxes as a Tensor"),
        (dict(boxes=ROIS.long()), TypeError, "boxes must be a floating point"),
        (dict(boxes=[torch.zeros(2, 5)]), ValueError, r"boxes\[0\] must have shape \[L, 4\]"),
        (dict(boxes=[torch.zeros(2, 4), "x"]), TypeError, r"boxes\[1\] must be a Tensor"),
        (dict(boxes="boxes"), TypeError, "boxes must be a Tensor"),
        (
            dict(boxes=[torch.zeros(1, 4)] * 3),
            ValueError,
            "boxes is a list of 3 tensors, one per image, but input has 2 images",
        ),
        (dict(boxes=ROIS.to("meta")), ValueError, "boxes is on meta but input is on cpu"),
        (
            dict(boxes=torch.tensor([[2, 0.0, 0, 1, 1]])),
            ValueError,
            r"batch indices must lie in \[0, 2\)",
        ),
        (dict(boxes=torch.tensor([[-1, 0.0, 0, 1, 1]])), ValueError, "batch indices must lie"),
        (
            dict(boxes=torch.tensor([[0.5, 0.0, 0, 1, 1]])),
            ValueError,
            "batch indices .* whole numbers",
        ),
        (dict(boxes=torch.tensor([[0, float("nan"), 0, 1, 1]])), ValueError, "NaN or infinite"),
        (dict(boxes=torch.tensor([[0, 0.0, 0, float("inf"), 1]])), ValueError, "NaN or infinite"),
        (dict(output_size=0), ValueError, "output_size must be positive"),
        (dict(output_size=(2, -1)), ValueError, "output_size must be positive"),
        (dict(output_size=(2, 2, 2)), TypeError, "output_size must be an int or a pair"),
        (dict(output_size=2.5), TypeError, "output_size must be an int or a pair"),
        (dict(output_size=(2.0, 2)), TypeError, "output_size must hold integers"),
        (dict(spatial_scale=0.0), ValueError, "spatial_scale must be positive and finite"),
        (dict(spatial_scale=-0.5), ValueError, "spatial_scale must be positive"),
        (dict(spatial_scale=float("inf")), ValueError, "spatial_scale must be positive and finite"),
        (dict(spatial_scale=float("nan")), ValueError, "spatial_scale must be positive and finite"),
        (dict(spatial_scale="1"), TypeError, "spatial_scale must be a real number"),
    ],
)
def test_bad_argument(op, kw, error, match):
    with pytest.raises(error, match=match):
        op(**kw)


@pytest.mark.parametrize(
    "kw,error,match",
    [
        (dict(sampling_ratio=2.0), TypeError, "sampling_ratio must be an integer"),
        (dict(sampling_ratio=1.5), TypeError, "sampling_ratio must be an integer"),
        (dict(sampling_ratio=True), TypeError, "sampling_ratio must be an integer"),
        (dict(aligned=1), TypeError, "aligned must be a bool"),
        (dict(mode="mean"), ValueError, "mode must be one of 'avg', 'max', 'onnx_max'"),
    ],
)
def test_bad_roi_align_argument(kw, error, match):
    with pytest.raises(error, match=match):
        align(**kw)


# a box whose adaptive grid would take more than MAX_ADAPTIVE_GRID (2**16) points a bin
# along an axis: here 3e5 px at scale 1 in 2x2 bins, 150,000 points (75,000 at the
# pyramid's level 1, scale 0.5)
HUGE = torch.tensor([[0, 0.0, 0.0, 3e5, 4.0]])


@pytest.mark.parametrize(
    "call",
    [
        lambda ratio: roiops.roi_align(X, HUGE, 2, 1.0, ratio, True),
        lambda ratio: roiops.roi_align(X, HUGE, 2, 1.0, ratio, False, mode="max"),
        lambda ratio: roiops.ps_roi_align(torch.randn(2, 8, 8, 8), HUGE, 2, 1.0, ratio),
        lambda ratio: roiops.roi_align_rotated(
            X, torch.tensor([[0, 4.0, 4, 3e5, 4, 30]]), 2, 1.0, ratio
        ),  # fmt: skip
        lambda ratio: roiops.multi_scale_roi_align(
            [X, X[:, :, ::2, ::2]], HUGE, 2, [1.0, 0.5], ratio, levels=torch.tensor([1])
        ),  # fmt: skip
        lambda ratio: torch.ops.roiops.roi_align_backward(
            torch.ones(1, 3, 2, 2), HUGE, 1.0, 2, 2, ratio, True, 2, 3, 8, 8
        ),  # fmt: skip
    ],
)
def test_an_absurd_adaptive_grid_is_a_bad_box(call):
    # (it would run for hours; torchvision's CPU kernel loops, or past 2**31 points samples
    # what its float-to-int conversion gives); with a fixed grid the box is fine
    with pytest.raises(ValueError, match=r"boxes: box 0 asks for (150000|75000) sampling points"):
        call(0)
    assert torch.isfinite(call(2)).all()


def test_the_adaptive_grid_limit_is_counted_as_the_kernels_count():
    from roiops import _validate

    limit = _validate.MAX_ADAPTIVE_GRID
    for aligned in (True, False):
        # 2**16 points (a box 2**17 cells wide in 2 bins) passes, one more does not; the
        # aligned offset of half a cell cancels out, as in the kernels' arithmetic
        fits = torch.tensor([[0, 3.0, 0.0, 3.0 + 2 * limit, 1.0]])
        _validate.check_adaptive_grid(fits, 1.0, 2, 2, 0, aligned, "op")
        over = torch.tensor([[0, 3.0, 0.0, 3.0 + 2 * limit + 0.5, 1.0]])
        with pytest.raises(ValueError, match="65537 sampling points"):
            _validate.check_adaptive_grid(over, 1.0, 2, 2, 0, aligned, "op")
        _validate.check_adaptive_grid(over, 1.0, 2, 2, 3, aligned, "op")  # a fixed grid
        # the height too, at the RoIs' own scales (the pyramid's), and rotated boxes' sizes
        tall = torch.tensor([[0, 0.0, 0.0, 1.0, 4.0 * limit]])
        _validate.check_adaptive_grid(tall, torch.tensor([0.5]), 2, 2, 0, aligned, "op")
        with pytest.raises(ValueError, match="box 0 asks"):
            _validate.check_adaptive_grid(tall, torch.tensor([0.75]), 2, 2, 0, aligned, "op")
        rotated = torch.tensor([[0, 0.0, 0.0, 1.0, 2.0 * limit, 0.0]])
        _validate.check_adaptive_grid(rotated, 1.0, 2, 2, 0, aligned, "op", rotated=True)
        with pytest.raises(ValueError, match="box 0 asks"):
            _validate.check_adaptive_grid(rotated, 1.0, 1, 2, 0, aligned, "op", rotated=True)


# finite coordinates that overflow the boxes' dtype once scaled: a corner (at scale 2),
# the width, the height (before: OverflowError from the reference's rounding, and
# whatever the CPU kernels' clamped conversions gave)
def overflowing(dtype: torch.dtype) -> list[Tensor]:
    big = 1e38 if dtype == torch.float32 else 6e307
    rows = [[0, 1, 1, 2 * big, 5], [0, -big, 1, big, 5], [0, 1, -big, 5, big]]
    return [torch.tensor([row], dtype=dtype) for row in rows]


PYRAMID = [X, X[:, :, ::2, ::2]]
AXIS_ALIGNED_OPS = [
    lambda b: roiops.roi_align(X.to(b.dtype), b, 2, 2.0, 2, True),
    lambda b: roiops.roi_align(X.to(b.dtype), b, 2, 2.0, 3, False, mode="max"),
    lambda b: roiops.roi_pool(X.to(b.dtype), b, 2, 2.0),
    lambda b: roiops.ps_roi_align(torch.randn(2, 8, 8, 8, dtype=b.dtype), b, 2, 2.0, 2),
    lambda b: roiops.ps_roi_pool(torch.randn(2, 8, 8, 8, dtype=b.dtype), b, 2, 2.0),
    lambda b: roiops.prroi_pool(X.to(b.dtype), b, 2, 2.0),
    lambda b: roiops.deform_roi_pool(X.to(b.dtype), b, None, 2, 2.0, 2),
    lambda b: roiops.multi_scale_roi_align(
        [f.to(b.dtype) for f in PYRAMID], b, 2, [2.0, 1.0], 2, levels=torch.tensor([0])
    ),  # fmt: skip
    lambda b: roiops.multi_scale_roi_pool(
        [f.to(b.dtype) for f in PYRAMID], b, 2, [2.0, 1.0], levels=torch.tensor([0])
    ),  # fmt: skip
]


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("call", AXIS_ALIGNED_OPS)
def test_a_box_that_overflows_once_scaled_is_a_bad_box(call, dtype, backend):
    with roiops.use_backend(backend):
        for box in overflowing(dtype):
            with pytest.raises(ValueError, match=rf"box 0 .* spatial_scale 2 overflows {dtype}"):
                call(box)
            # half the box is one (a fixed grid: an adaptive one would be absurd)
            assert torch.isfinite(call(box / 2)).all()


def test_a_pyramid_box_is_scaled_by_its_own_level():
    # (the corner at 2e38 overflows float32 at level 0's scale, 2, not at level 1's)
    box = torch.tensor([[0, 1.0, 1, 2e38, 5]])
    calls = [
        lambda level: roiops.multi_scale_roi_align(PYRAMID, box, 2, [2.0, 1.0], 2, levels=level),
        lambda level: roiops.multi_scale_roi_pool(PYRAMID, box, 2, [2.0, 1.0], levels=level),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="box 0 .* times spatial_scale 2 overflows"):
            call(torch.tensor([0]))
        assert torch.isfinite(call(torch.tensor([1]))).all()


def test_value_checks_also_guard_the_custom_op():
    # called directly (as torch.compile would), the op itself still refuses bad values
    with pytest.raises(ValueError, match="batch indices must lie"):
        torch.ops.roiops.roi_align(X, torch.tensor([[7, 0.0, 0, 1, 1]]), 1.0, 2, 2, 2, True)
    with pytest.raises(ValueError, match="NaN"):
        torch.ops.roiops.roi_pool(X, torch.tensor([[0, float("nan"), 0, 1, 1]]), 1.0, 2, 2)


def test_backend_switch(monkeypatch):
    monkeypatch.setenv("ROIOPS_BACKEND", "reference")
    ref = align()
    monkeypatch.setenv("ROIOPS_BACKEND", "numba")
    assert torch.equal(align(), ref)
    monkeypatch.setenv("ROIOPS_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="ROIOPS_BACKEND: unknown backend 'cuda-magic'"):
        align()
    monkeypatch.setenv("ROIOPS_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="triton needs CUDA tensors, or TRITON_INTERPRET=1"):
        align()
    monkeypatch.delenv("ROIOPS_BACKEND")
    with pytest.raises(ValueError, match="unknown backend"), roiops.use_backend("fast"):
        pass
    with roiops.use_backend("reference"):
        assert torch.equal(align(), ref)


def test_plane_too_large_for_int32_offsets():
    # a [1, 1, 2**16, 2**15] map has 2**31 cells in one plane; an expanded view costs no memory
    huge = torch.zeros(1, 1, 1, 1).expand(1, 1, 2**16, 2**15)
    with pytest.raises(ValueError, match=r"H \* W = 2147483648 is too large"):
        roiops.roi_pool(huge, torch.tensor([[0, 0.0, 0, 1, 1]]), 1)


def test_triton_backend_without_triton_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )
    monkeypatch.setenv("ROIOPS_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    installed = roiops._backend._triton_installed  # looked up once a process
    installed.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="needs the 'triton' package"):
            align()
    finally:
        installed.cache_clear()


def test_where_box_values_are_checked(monkeypatch):
    # free on CPU and for the reference backend; on CUDA the Triton kernels take any
    # value (checking would synchronise), unless ROIOPS_CHECK_VALUES=1 asks for it
    from roiops._validate import roi_values_checked

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv("ROIOPS_CHECK_VALUES", raising=False)
    assert roi_values_checked(cpu, "numba") and roi_values_checked(cpu, "triton")
    assert roi_values_checked(cuda, "reference")
    assert not roi_values_checked(cuda, "triton")
    monkeypatch.setenv("ROIOPS_CHECK_VALUES", "1")
    assert roi_values_checked(cuda, "triton")


def test_environment_is_read_at_every_call_as_os_environ_has_it(monkeypatch):
    # (roiops reads os.environ's bytes table directly: ~25 ns against ~500 for .get of
    # an unset variable)
    import os

    from roiops._backend import device_type, getenv

    name = "ROIOPS_TEST_VARIABLE_\u00e9"
    monkeypatch.delenv(name, raising=False)
    assert getenv(name, "unset") == "unset" == os.environ.get(name, "unset")
    for value in ("1", "", " triton ", "caf\u00e9"):
        monkeypatch.setenv(name, value)
        assert getenv(name, "unset") == value == os.environ[name]
    monkeypatch.delenv(name)
    assert getenv(name, "0") == "0"
    for device in (torch.device("cpu"), torch.device("cuda", 1), torch.device("meta")):
        assert device_type(device) == device.type == device_type(device)


def test_triton_backend_on_cpu_tensors_checks_values(monkeypatch):
    # the interpreter path keeps the CPU contract: a clear error, not NaN outputs
    monkeypatch.setenv("ROIOPS_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="batch indices must lie"):
        align(boxes=torch.tensor([[2, 0.0, 0, 1, 1]]))


# A parent runs ops (Numba's threads start), then a forked child (how a DataLoader's
# workers start on Linux) runs them again, with one torch thread as a DataLoader worker
# has: roi_align forward and backward, and ps_roi_align (a kernel that calls a kernel)
FORK_SCRIPT = """
import multiprocessing, sys, numba, torch, roiops
from roiops.cpu import roi_align as cpu_align
x = torch.randn(2, 8, 9, 9)
rois = torch.tensor([[0, 1.0, 1, 7, 7], [1, 0.5, 2, 8.5, 6], [0, 3, 3, 4, 9]])

def run():
    leaf = x.clone().requires_grad_()
    out = roiops.roi_align(leaf, rois, 2, 1.0, 0, True)
    out.backward(torch.ones_like(out))
    return [out, leaf.grad, roiops.ps_roi_align(x, rois, 2, 1.0, 2)]

expected = run()

def child(queue):
    torch.set_num_threads(1)
    got = run()
    serial = not cpu_align.roi_align_avg_forward.targetoptions.get("parallel", False)
    queue.put((serial, all(torch.equal(a, b) for a, b in zip(got, expected))))

gnu = numba.threading_layer() == "omp" and getattr(
    sys.modules.get("numba.np.ufunc.omppool"), "openmp_vendor", "") == "GNU"
context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
process.join(280)
print(gnu, *queue.get(timeout=10), process.exitcode)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
@pytest.mark.parametrize("layer", [None, "workqueue"])
def test_a_process_forked_after_a_call_runs_the_ops(layer):
    # on GNU OpenMP (Numba's default layer here) Numba would terminate the child at its
    # first parallel launch: the child runs serial twins of the kernels instead, the
    # same bits; on a fork-safe layer (workqueue) the parallel kernels themselves
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    gnu, serial, equal, exitcode = done.stdout.split()[-4:]
    assert (equal, exitcode) == ("True", "0"), done.stderr[-2000:]
    assert serial == gnu
    assert gnu == "False" or layer is None
