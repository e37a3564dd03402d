"""What `make gpu` checks (1-5) and `make gpu-tune` measures (6-9) on a CUDA machine, in
one run, ending in one table (``--parts``: which; the default is 1-5, within 8 minutes).

1. the Triton tests compiled (tests/test_triton.py) and the CUDA tests (tests/test_cuda.py:
   torchvision equality, no host synchronisation, CUDA graph capture, determinism, bad
   values; and the patched extractors' no-synchronisation test of tests/test_drop_in.py),
   run by pytest processes side by side that share the tests out;
2. `roiops bench --device cuda` in float32 and float16 (ratios against torchvision in the
   same run);
3. the latency of a 16-RoI call, roiops against torchvision;
4. forward+backward against torchvision under torch.use_deterministic_algorithms(True);
5. how many distinct input gradients 5 identical backward calls give, for both libraries;
6. every bench case in the launchers' program order and with RoIs innermost
   (``roiops.gpu.tiles``), beside torchvision, in the same rounds;
7. for NCHW maps, the NCHW forward kernel against a copy to channels_last followed by the
   NHWC kernel (which is faster decides whether NCHW maps should be transposed first);
8. where the deterministic backward's time goes: the int64 zero-fill, max |grad|, the
   scatter and the conversion, each timed alone, beside torchvision's whole backward;
9. the kernels alone under other program sizes and orders than the launchers';
10. roi_align's forward with its points reusing their row's loads or not (each of
    ``REUSE_SETTINGS``), at the op, on adaptive sampling grids;
11. (``side``) the ``benchmarks/`` scripts of the ops ``roiops bench`` does not time,
    against their own anchors, on their CUDA cases (``SIDE_BENCHMARKS``).

While the tests run, as many processes compile the kernels of the timed parts (6-9 and
the bench, ``warm_up``), so that those load them from Triton's disk cache when timed.

Runs from a source tree with a preinstalled torch/Triton/torchvision/pytest (no install):
``PYTHONPATH=. python3 benchmarks/gpu_report.py [--json PATH] [--quick] [--parts ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial

import numpy as np
import torch
import triton

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import roiops  # noqa: E402
from roiops import bench  # noqa: E402

# the tests, shared out among TEST_WORKERS pytest processes as they go (``tests/conftest.py``,
# ROIOPS_TEST_CLAIMS): their time is mostly Triton's compiler, one core a process. (Four
# fixed groups took 37, 131, 26 and 29 s on an H100 machine at c140be5: the run waited
# for the largest.) The CUDA tests come first, so that their torch.compile case, the
# longest single test, starts early.
TEST_ARGS = (
    "tests/test_cuda.py",
    "tests/test_triton.py",
    # (roiops.patch()'s detectron2 pooler and mmdet extractor, on stand-ins of both)
    "tests/test_drop_in.py::test_patched_extractors_do_not_synchronise_on_cuda",
)
TEST_WORKERS = max(2, min(8, (os.cpu_count() or 2) // 2))


def run_tests(timeout_s: float, workers: int | None = None) -> dict:
    """TEST_ARGS in ``workers`` (TEST_WORKERS) pytest processes that share the tests out,
    stopped after ``timeout_s`` (what they printed is kept); counts summed over them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    logs, ok, counts = [], True, {}
    with tempfile.TemporaryDirectory(prefix="roiops-claims-") as claims:
        env["ROIOPS_TEST_CLAIMS"] = claims
        command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                   *TEST_ARGS]  # fmt: skip
        pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        runs = [
            subprocess.Popen(command, cwd=ROOT, env=env, **pipe)
            for _ in range(workers or TEST_WORKERS)
        ]
        for i, run in enumerate(runs):
            left = max(timeout_s - (time.perf_counter() - started), 1.0)
            try:
                stdout, _ = run.communicate(timeout=left)
                ok = ok and run.returncode == 0
            except subprocess.TimeoutExpired:
                run.kill()
                stdout, _ = run.communicate()
                stdout += f"\npytest stopped after {timeout_s:.0f} s"
                ok = False
            tail = stdout.strip().splitlines()[-25:] or [""]
            print(f"$ pytest {' '.join(TEST_ARGS)} (process {i + 1} of {len(runs)})\n"
                  + "\n".join(tail), flush=True)  # fmt: skip
            for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", tail[-1]):
                counts[word] = counts.get(word, 0) + int(n)
            logs.append(stdout)
    seconds = time.perf_counter() - started
    return {"counts": counts, "seconds": seconds, "ok": ok, "workers": len(runs),
            "log": "\n".join(logs)}  # fmt: skip


def host_us_per_call(fn, calls: int = 200) -> float:
    """Median over 5 rounds of the host time per call of ``calls`` back-to-back calls."""
    fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


# GPU clock cycles a microsecond, roughly (torch.cuda._sleep counts cycles; H100/H200 run
# at 1.6-2.0 GHz): for a wait of about the bench's small cases' kernels
SLEEP_CYCLES_PER_US = 1800
WAIT_US = 200


def host_us_after_sync(fn, wait_us: float = 0.0, calls: int = 200) -> float:
    """Median host time of one call made right after a synchronisation (the GPU idle)
    that waited ``wait_us`` of GPU time (a sleep kernel): what a per-call sample of the
    bench pays before its kernels start. (On an H200 host, 2026-11-28, roiops' calls
    through torch.ops took 1-3x longer there than back to back, torchvision's not.)"""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        if wait_us:
            torch.cuda._sleep(int(wait_us * SLEEP_CYCLES_PER_US))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(times)


def box_rows(rng, batch_size: int, count: int, image_h: float, image_w: float,
             sides_px=(16, 400), device: str = "cuda") -> torch.Tensor:  # fmt: skip
    sides = rng.uniform(*sides_px, (count, 2))
    x1 = rng.uniform(0, np.maximum(image_w - sides[:, 0], 1))
    y1 = rng.uniform(0, np.maximum(image_h - sides[:, 1], 1))
    batch = rng.integers(0, batch_size, count)
    rois = np.stack([batch, x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], axis=1)
    return torch.tensor(rois, dtype=torch.float32, device=device)


def latency(rng) -> dict:
    import torchvision

    from roiops.gpu.roi_align import roi_align_forward

    x = torch.randn(2, 256, 50, 68, device="cuda")
    leaf = x.clone().requires_grad_()
    rois = box_rows(rng, 2, 16, 200, 272)
    grad = torch.randn(16, 256, 7, 7, device="cuda")
    scores = torch.randn(2, 21 * 49, 50, 68, device="cuda")  # R-FCN's class scores
    one_at_a_time = {
        "ops_forward": lambda: torch.ops.roiops.roi_align(x, rois, 0.25, 7, 7, 2, True),
        "torchvision_ops_forward": lambda: torch.ops.torchvision.roi_align(
            x, rois, 0.25, 7, 7, 2, True
        ),
        "launcher": lambda: roi_align_forward(x, rois, 0.25, 7, 7, 2, True, False),
    }
    return {
        "roiops_us": host_us_per_call(lambda: roiops.roi_align(x, rois, 7, 0.25, 2, True)),
        "torchvision_us": host_us_per_call(
            lambda: torchvision.ops.roi_align(x, rois, 7, 0.25, 2, True)
        ),
        # where the time goes: the Triton launcher alone (allocation + launch), and the
        # call through the custom op and its autograd wrapper (an input that requires grad)
        "launcher_us": host_us_per_call(
            lambda: roi_align_forward(x, rois, 0.25, 7, 7, 2, True, False)
        ),
        "recording_autograd_us": host_us_per_call(
            lambda: roiops.roi_align(leaf, rois, 7, 0.25, 2, True)
        ),
        # the bench's calls: each library's op through torch.ops, forward and backward
        # (benchmarks/host_overhead.py's rows on a CPU, launched against stand-ins)
        "ops_forward_us": host_us_per_call(
            lambda: torch.ops.roiops.roi_align(x, rois, 0.25, 7, 7, 2, True)
        ),
        "torchvision_ops_forward_us": host_us_per_call(
            lambda: torch.ops.torchvision.roi_align(x, rois, 0.25, 7, 7, 2, True)
        ),
        "ops_backward_us": host_us_per_call(
            lambda: torch.ops.roiops.roi_align_backward(
                grad, rois, 0.25, 7, 7, 2, True, 2, 256, 50, 68
            )
        ),
        "torchvision_ops_backward_us": host_us_per_call(
            lambda: torch.ops.torchvision._roi_align_backward(
                grad, rois, 0.25, 7, 7, 2, 256, 50, 68, 2, True
            )
        ),
        # the forwards of the bench's smallest cases, which host time decides per call:
        # roi_pool's (with its argmax) and R-FCN's ps_roi_pool
        "ops_roi_pool_forward_us": host_us_per_call(
            lambda: torch.ops.roiops.roi_pool(x, rois, 0.25, 7, 7)
        ),
        "torchvision_ops_roi_pool_forward_us": host_us_per_call(
            lambda: torch.ops.torchvision.roi_pool(x, rois, 0.25, 7, 7)
        ),
        "ops_ps_roi_pool_forward_us": host_us_per_call(
            lambda: torch.ops.roiops.ps_roi_pool(scores, rois, 1 / 16, 7, 7)
        ),
        "torchvision_ops_ps_roi_pool_forward_us": host_us_per_call(
            lambda: torch.ops.torchvision.ps_roi_pool(scores, rois, 1 / 16, 7, 7)
        ),
        # the forward's kept launch alone, as it launches and as Triton's path would
        **{f"{name}_us": host_us_per_call(fn) for name, fn in launch_alone(x, rois).items()},
        # the forward through torch.ops (and roiops' launcher) one call at a time, right
        # after a synchronisation, and after one that waited WAIT_US for the GPU
        **{
            f"{name}_after_{when}_us": host_us_after_sync(fn, wait)
            for name, fn in one_at_a_time.items()
            for when, wait in (("sync", 0.0), ("wait", WAIT_US))
        },
    }


def launch_alone(x, rois) -> dict:
    """Calls that launch roi_align's kept forward launch (``roiops.gpu.launch.Launch``,
    7x7 bins, sampling_ratio 2, its output allocated once) on ``x`` and ``rois``:
    ``launch``, the whole direct launch; ``fire``, its compiled kernel launched as it now
    is (the tensors' addresses, no hooks while Triton's hook chains are empty); and
    ``fire_as_triton``, the same kernel given what Triton's path gives it (the tensors,
    the launch metadata, the chains), as direct launches did before 4cd1f24. Empty where
    launches are not kept (Triton's path)."""
    from roiops.gpu import launch as gpu_launch
    from roiops.gpu import roi_align as gpu_align
    from roiops.gpu import tiles

    K, C = rois.shape[0], x.shape[1]
    out = x.new_empty((K, C, 7, 7))
    launch = gpu_align._forward_launch(x.shape, x.dtype, x.get_device(), K, False, 0.25, 7, 7,
                                       2, True, False, False, tiles.forward_rois_inner(False),
                                       *gpu_align.reuse_loads(2))  # fmt: skip
    tensors = (x, rois, out, out)
    launch(*tensors)
    launch(*tensors)
    if launch.seen is None:
        return {}
    _, compiled, tail = launch.seen
    fire, grid, runtime = gpu_launch.Kernel.fire, launch.grid, triton.knobs.runtime
    device = gpu_launch.driver.active.get_current_device()
    addresses = tuple(t.data_ptr() for t in tensors)
    chains = (runtime.launch_enter_hook, runtime.launch_exit_hook)
    return {
        "launch": lambda: launch(*tensors),
        "fire": lambda: fire(compiled, grid, device, (*addresses, *tail), (None, None)),
        "fire_as_triton": lambda: fire(compiled, grid, device, (*tensors, *tail), chains),
    }


# calls of each op that launch_check compares: the first goes through Triton's path and
# keeps its launches, the later ones launch them directly
LAUNCH_CHECK_CALLS = 3


def launch_check(device: str = "cuda", calls: dict | None = None) -> dict:
    """Whether roiops' direct launches (``roiops.gpu.launch``: the kept launches and
    ``Kernel``'s table) give on this machine what Triton's own path gives: roi_align and
    roi_pool forward and backward (``launch_check_calls``), each called
    ``LAUNCH_CHECK_CALLS`` times, against the same calls with ``ROIOPS_FAST_LAUNCH=0``,
    bit for bit (the backward is deterministic). Where a call differs or raises, the rest
    of the run takes Triton's path (the variable set to 0 in this process and so in those
    it starts) and the summary says so: the figures then lack the direct launches'
    saving, but are figures (tested on CPU only before a GPU ran them)."""
    from roiops.gpu.launch import ENV_VAR

    calls = launch_check_calls(device) if calls is None else calls
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "0"
    try:
        expected = {name: call() for name, call in calls.items()}
    finally:
        if before is None:
            del os.environ[ENV_VAR]
        else:
            os.environ[ENV_VAR] = before
    differ, error = [], None
    try:
        for name, call in calls.items():
            for i in range(LAUNCH_CHECK_CALLS):
                got = call()
                if not all(map(torch.equal, got, expected[name])):
                    differ.append(f"{name}, call {i + 1}")
    except Exception:  # noqa: BLE001 -- reported, and the run goes on on Triton's path
        error = traceback.format_exc()
        print(f"a direct launch failed:\n{error}", flush=True)
    ok = not differ and error is None
    if not ok:
        os.environ[ENV_VAR] = "0"
    return {"ok": ok, "differ": differ, "error": error, "switched_off": before == "0"}


# the longest launch_check's process may take (imports, compiling a few kernels)
LAUNCH_CHECK_TIMEOUT_S = 240.0


def launch_check_command(device: str) -> list[str]:
    return [sys.executable, str(pathlib.Path(__file__).resolve()), "--launch-check", device]


def launch_check_in_a_process(device: str = "cuda") -> dict:
    """``launch_check`` in a process of its own (``--launch-check``): a direct launch that
    goes wrong can leave the CUDA context unusable (an illegal address is sticky), which
    must not cost this run its figures. Its verdict; where the process fails, that
    failure, and the rest of the run takes Triton's path as for any other."""
    from roiops.gpu.launch import ENV_VAR

    try:
        done = subprocess.run(launch_check_command(device), capture_output=True, text=True,
                              timeout=LAUNCH_CHECK_TIMEOUT_S)  # fmt: skip
        last = (done.stdout.strip().splitlines() or [""])[-1]
        verdict = json.loads(last) if done.returncode == 0 else None
        failure = f"exit status {done.returncode}: {done.stderr[-2000:]}"
    except (subprocess.TimeoutExpired, ValueError) as e:
        verdict, failure = None, repr(e)
    if verdict is None:
        verdict = {"ok": False, "differ": [], "error": f"the check's process failed, {failure}",
                   "switched_off": os.environ.get(ENV_VAR) == "0"}  # fmt: skip
        print(verdict["error"], flush=True)
    if not verdict["ok"]:
        os.environ[ENV_VAR] = "0"
    return verdict


def launch_check_calls(device: str) -> dict:
    """``{name: call}``: each call returns its op's output and input gradient, for the
    latency part's inputs (whose kernels it then finds compiled)."""
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(2, 256, 50, 68, device=device, generator=generator)
    rois = box_rows(np.random.default_rng(0), 2, 16, 200, 272, device=device)
    grad = torch.randn(16, 256, 7, 7, device=device, generator=generator)

    def forward_backward(op):
        leaf = x.clone().requires_grad_()
        out = op(leaf, rois, 7, 0.25)
        out.backward(grad)
        return out.detach(), leaf.grad

    align = partial(roiops.roi_align, sampling_ratio=2, aligned=True)
    return {
        "roi_align": lambda: forward_backward(align),
        "roi_pool": lambda: forward_backward(roiops.roi_pool),
    }


def forward_backward_ms(fn, x, grad) -> float:
    def step():
        (g,) = torch.autograd.grad(fn(x), x, grad)
        return g

    return bench.time_ms(step, "cuda", ROUNDS)


def deterministic_mode(rng) -> dict:
    """roiops forward+backward vs torchvision's under use_deterministic_algorithms(True)
    (its pure-PyTorch fallback), and distinct gradients in 5 runs without it."""
    import torchvision

    x = torch.randn(2, 256, 200, 272, device="cuda", requires_grad=True)
    rois = box_rows(rng, 2, 1000, 800, 1088)
    grad = torch.randn(1000, 256, 7, 7, device="cuda")

    def ours(t):
        return roiops.roi_align(t, rois, 7, 0.25, 2, True)

    def theirs(t):
        return torchvision.ops.roi_align(t, rois, 7, 0.25, 2, True)

    def digest(fn):
        (g,) = torch.autograd.grad(fn(x), x, grad)
        return hashlib.sha1(g.cpu().numpy().tobytes()).hexdigest()

    result = {
        "distinct_gradients_of_5": {
            "roiops": len({digest(ours) for _ in range(5)}),
            "torchvision": len({digest(theirs) for _ in range(5)}),
        },
        "roiops_ms": forward_backward_ms(ours, x, grad),
    }
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        result["torchvision_deterministic_ms"] = forward_backward_ms(theirs, x, grad)
    finally:
        torch.use_deterministic_algorithms(before)
    return result


# (name, NCHW shape, RoIs, box sides in pixels, spatial_scale)
LAYOUT_CASES = (
    ("b", (2, 256, 200, 272), 1000, (16, 400), 0.25),
    ("fpn P2", (8, 256, 200, 272), 2500, (16, 400), 0.25),
    ("a small", (1, 512, 256, 256), 512, (8, 64), 0.125),  # bins of 0.1-1.2 cells
)


def forward_layouts(rng, device: str = "cuda", cases=LAYOUT_CASES, pooled: int = 7) -> dict:
    """Forward launcher time (ms) on NCHW maps: the NCHW kernel, and a copy to
    channels_last plus the NHWC kernel; float32, ``pooled`` x ``pooled`` bins,
    sampling_ratio 2."""
    from roiops.gpu.roi_align import roi_align_forward
    from roiops.gpu.roi_pool import roi_pool_forward

    out, q = {}, pooled
    for name, shape, count, sides, scale in cases:
        x = torch.randn(shape, device=device)
        rois = box_rows(rng, shape[0], count, shape[2] / scale, shape[3] / scale, sides, device)
        ops = {  # (the NCHW kernel, a copy to channels_last and the NHWC kernel)
            "roi_align": (
                lambda r=rois, x=x, s=scale: roi_align_forward(x, r, s, q, q, 2, True, False),
                lambda r=rois, x=x, s=scale: roi_align_forward(
                    x.contiguous(memory_format=torch.channels_last), r, s, q, q, 2, True, False
                ),
            ),
            "roi_pool": (
                lambda r=rois, x=x, s=scale: roi_pool_forward(x, r, s, q, q, False, nhwc=False),
                lambda r=rois, x=x, s=scale: roi_pool_forward(x, r, s, q, q, False, nhwc=True),
            ),
            "roi_pool training": (  # with the argmax
                lambda r=rois, x=x, s=scale: roi_pool_forward(x, r, s, q, q, True, nhwc=False),
                lambda r=rois, x=x, s=scale: roi_pool_forward(x, r, s, q, q, True, nhwc=True),
            ),
        }
        for op, (nchw_fn, nhwc_fn) in ops.items():
            nchw = bench.time_ms(nchw_fn, device, ROUNDS)
            nhwc = bench.time_ms(nhwc_fn, device, ROUNDS)
            out[f"{op} {name}"] = {"nchw_ms": nchw, "copy_then_nhwc_ms": nhwc}
    return out


# the backward's passes timed again BACK_TO_BACK calls a synchronisation (the GPU's time)
BACK_TO_BACK = 10
BACK_TO_BACK_PASSES = ("zero_and_bound", "zeros_then_vector_norm", "scatter", "convert",
                       "regions", "zero_regions_and_bound", "scatter_regions",
                       "convert_regions", "scatter_each")  # fmt: skip
BACKWARD_PASS_CASES = (
    "a small sr=0",
    "a small sr=2",
    "b sr=2",
    "fpn 8x512",
    "a small",
    "b",
    "rfcn sr=2",
    "rfcn",
)


def backward_passes(device: str = "cuda", cases: list | None = None) -> dict:
    """Where the deterministic backward's time goes (ms, float32, the bench's inputs, a
    pyramid's finest level): zeroing the int64 accumulator, ``max |grad|``, the scatter
    kernel and the conversion to float, each timed alone (host time of a call and a
    synchronisation), beside torchvision's whole (float-atomic) backward, and the passes
    again BACK_TO_BACK calls a synchronisation (``<pass> back to back``: the GPU's time,
    without the host's); for ps_roi_pool, the scatter in bands of rows (``BAND``); for
    ps_roi_align, a program per bin (``PS_LANES`` off); for roi_pool and roi_align, the
    sums in the RoIs' regions (``REGIONS``: their kernel, zeroing, scatter, conversion and
    the op; and ``regions_chosen``, whether the case's RoIs chose them); for roi_pool, its
    scatter with an atomic a bin (``RUNS`` off: the scatter and the op; the launchers add
    runs of bins on one cell once)."""
    if cases is None:
        cases = [c for c in bench.cases(device="cuda") if c.name in BACKWARD_PASS_CASES]
    return {f"{c.op} {c.name}": _pass_times(c, device) for c in cases}


def _pass_times(case, device: str) -> dict:
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    from roiops.gpu import fixed_point
    from roiops.gpu import ps_roi_pool as gps
    from roiops.gpu import roi_align as ga
    from roiops.gpu import roi_pool as gp
    from roiops.gpu.fixed_point import Accumulator, zero_and_bound

    lv = bench.make_inputs(case, device, torch.float32)[0]
    x, rois, grad = lv.x, lv.rois, lv.grad
    p = case.output_size
    band = gps.BAND if case.op == "ps_roi_pool" else 0  # (as ps_roi_pool_backward chooses)
    bins = p * p if case.op.startswith("ps_") else 1
    sums = Accumulator(grad, x.shape, bins=bins, band=band)
    gx = torch.empty_like(x)
    if case.op == "roi_pool":
        _, argmax = gp.roi_pool_forward(x, rois, lv.spatial_scale, p, p)

        def scatter():
            gp.roi_pool_scatter(sums, grad, rois, argmax)
    elif case.op == "ps_roi_pool":

        def scatter():
            gps.ps_roi_pool_scatter(sums, grad, rois, lv.spatial_scale)
    else:  # roi_align, ps_roi_align

        def scatter():
            # (ps_roi_align is aligned, as its op calls the scatter)
            ga.roi_align_scatter(sums, grad, rois, None, lv.spatial_scale, p, p,
                                 case.sampling_ratio, case.aligned,
                                 case.op == "ps_roi_align")  # fmt: skip

    ours = bench._level_callables(case, lv)[("roiops", "backward")]
    fns = {
        # zeroing the accumulator and max |grad| in the launchers' one launch, and as torch's
        # two calls (which the launchers made before 2026-11-27)
        "zero_and_bound": partial(zero_and_bound, sums.flat, grad),
        "zeros_then_vector_norm": lambda: (
            sums.flat.zero_(),
            torch.linalg.vector_norm(grad, float("inf")),
        ),
        "scatter": scatter,
        "convert": lambda: sums.write_to(gx),
        # the bench's own call of torchvision's backward
        "torchvision_backward": bench._level_callables(case, lv)[("torchvision", "backward")],
        # and roiops's, through its custom op, as the bench calls it
        "roiops_backward": ours,
    }
    if case.op == "ps_roi_pool":
        # the scatter in bands of rows (and to every cell, BAND 0) against the launcher's
        for other in (b for b in (0, 1, 8, 16) if b != band):
            cells = Accumulator(grad, x.shape, bins=bins, band=other)
            fns[f"scatter_band_{other}"] = partial(gps.ps_roi_pool_scatter, cells, grad, rois,
                                                   lv.spatial_scale)  # fmt: skip
            fns[f"convert_band_{other}"] = partial(cells.write_to, gx)
            fns[f"roiops_backward_band_{other}"] = _with_settings(ours, gps, BAND=other)
    if case.op == "ps_roi_align":
        # a program per (RoI, bin, block of channels), against the launcher's PS_LANES
        fns["scatter_per_bin"] = _with_settings(scatter, ga, PS_LANES=False)
        fns["roiops_backward_per_bin"] = _with_settings(ours, ga, PS_LANES=False)
    chosen = {}
    if case.op in ("roi_pool", "roi_align"):
        # the sums zeroed and converted in the RoIs' regions only, where those are chosen
        if case.op == "roi_pool":
            module = gp
            find = partial(gp.roi_pool_regions, rois, x.shape, lv.spatial_scale, p, p)
        else:
            module = ga
            find = partial(ga.roi_align_regions, rois, x.shape, lv.spatial_scale, p, p,
                           case.sampling_ratio, case.aligned)  # fmt: skip
        regions = find()
        in_regions = Accumulator(grad, x.shape, regions=regions)
        chosen["regions_chosen"] = regions.chosen()
        fns["regions"] = find
        fns["zero_regions_and_bound"] = partial(regions.zero_and_bound, in_regions.flat, grad,
                                                x.shape[1])  # fmt: skip
        if case.op == "roi_pool":
            fns["scatter_regions"] = partial(gp.roi_pool_scatter, in_regions, grad, rois, argmax)
        else:
            fns["scatter_regions"] = partial(ga.roi_align_scatter, in_regions, grad, rois, None,
                                             lv.spatial_scale, p, p, case.sampling_ratio,
                                             case.aligned)  # fmt: skip
        fns["convert_regions"] = partial(in_regions.write_to, gx)
        fns["roiops_backward_regions"] = _with_settings(ours, module, REGIONS=True)
    if case.op == "roi_pool":
        # an atomic a bin (RUNS off), against the launchers' runs of bins on one argmax
        # cell added once
        fns["scatter_each"] = _with_settings(scatter, gp, RUNS=False)
        fns["roiops_backward_each"] = _with_settings(ours, gp, RUNS=False)
    # the op with max |grad| taken the other way than TORCH_BOUND_GRADIENTS has it take it
    torch_bound = grad.numel() >= fixed_point.TORCH_BOUND_GRADIENTS
    other = 2**62 if torch_bound else 0
    fns["roiops_backward_other_bound"] = _with_settings(ours, fixed_point,
                                                        TORCH_BOUND_GRADIENTS=other)  # fmt: skip
    times = bench.time_interleaved(fns, device, ROUNDS)
    passes = {name: fn for name, fn in fns.items() if name in BACK_TO_BACK_PASSES}
    gpu_times = bench.time_interleaved(passes, device, ROUNDS, calls=BACK_TO_BACK)
    return {**times, **{f"{name} back to back": ms for name, ms in gpu_times.items()}, **chosen,
            "torch_bound": torch_bound}  # fmt: skip


def _with_settings(fn, module, **values):
    """``fn`` run with ``module``'s constants set to ``values`` (and back after it); with
    ``roiops.gpu.tiles``'s, the grids and launches it caches from its sizes are computed
    again (another module's settings are in the keys of the launches that read them)."""
    from roiops.gpu import tiles

    def run():
        before = {name: getattr(module, name) for name in values}
        for name, value in values.items():
            setattr(module, name, value)
        if module is tiles:
            tiles.clear_caches()
        try:
            return fn()
        finally:
            for name, value in before.items():
                setattr(module, name, value)
            if module is tiles:
                tiles.clear_caches()

    return run


# The program orders `program_order` times beside the launchers' (roiops.gpu.tiles: RoIs
# innermost but for adaptive grids' forwards, 32 channels a scatter program): RoI-major
# for every kernel with 256 channels a scatter program (the launchers' scatters before
# 2026-11-27), RoIs innermost everywhere with 256, and
# with 16 channels (the accumulator's share of a block in L2: 8 bytes a channel, 14 MB
# for the bench's 'b' map against 50 MB of L2; 16 leaves half of a warp's lanes idle)
# and 32 channels for the NHWC forward too
PROGRAM_ORDERS = {
    "rois major": dict(GATHER_ROIS_INNER=False, SCATTER_ROIS_INNER=False,
                       ADAPTIVE_ROIS_INNER=False, BACKWARD_CHANNELS=256),
    "rois inner, 256 channels": dict(GATHER_ROIS_INNER=True, SCATTER_ROIS_INNER=True,
                                     ADAPTIVE_ROIS_INNER=True, BACKWARD_CHANNELS=256),
    "rois inner, 16 channels": dict(GATHER_ROIS_INNER=True, SCATTER_ROIS_INNER=True,
                                    ADAPTIVE_ROIS_INNER=True, BACKWARD_CHANNELS=16),
    "rois inner, 32 channels NHWC": dict(GATHER_ROIS_INNER=True, SCATTER_ROIS_INNER=True,
                                         ADAPTIVE_ROIS_INNER=True, NHWC_FORWARD_CHANNELS=32),
}  # fmt: skip


def program_order(device: str = "cuda", cases: list | None = None) -> list[dict]:
    """Every bench case and direction (``roiops bench``'s float32 inputs and calls),
    torchvision and roiops in the launchers' program order and in each of
    ``PROGRAM_ORDERS``, timed in the same rounds: which order the launchers should use,
    measured."""
    from roiops.gpu import tiles

    rows = []
    for case in bench.cases(device="cuda") if cases is None else cases:
        levels = bench.make_inputs(case, device, torch.float32)
        fns = bench.callables(case, levels)
        for direction in bench.directions(case):
            timed = {lib: fns[(lib, direction)] for lib in ("torchvision", "roiops")}
            for name, values in PROGRAM_ORDERS.items():
                timed[name] = _with_settings(fns[("roiops", direction)], tiles, **values)
            ms = bench.time_interleaved(timed, device, ROUNDS)
            rows.append({"op": case.op, "case": case.name, "direction": direction, "ms": ms})
    for r in rows:
        print(f"{r['op']:<22} {r['case']:<14} {r['direction']:<9} "
              + " ".join(f"{name} {t:.3f}" for name, t in r["ms"].items()), flush=True)  # fmt: skip
    return rows


# `reuse_loads`: the settings of roiops.gpu.roi_align's REUSE_LOADS it times at the op,
# (value, REUSE_MIN_POINTS) by name, and its cases: the bench's with an adaptive grid, and
# its FPN and R-FCN cases with one (sampling_ratio=0, detectron2's default)
REUSE_SETTINGS = {"off": (False, None), "adaptive": ("adaptive", None), "wide 3": ("wide", 3),
                  "wide 5": ("wide", 5), "wide 8": ("wide", 8)}  # fmt: skip
REUSE_CASES = (("a small sr=0", None), ("a large sr=0", None), ("fpn 8x512", "fpn 8x512 sr=0"),
               ("rfcn sr=2", "rfcn sr=0"))  # fmt: skip


def reuse_loads(device: str = "cuda", cases: list | None = None) -> dict:
    """ms of the op (``roiops bench``'s float32 forward through ``torch.ops``) under each
    of ``REUSE_SETTINGS``, and torchvision's, in the same rounds, per call and
    BACK_TO_BACK calls back to back: where the forward's points should reuse their row's
    loads (``roiops.gpu.roi_align.REUSE_LOADS``), measured on the pyramid of detectron2's
    default beside the large boxes that gain."""
    from dataclasses import replace

    from roiops.gpu import roi_align as gpu_align

    if cases is None:
        by_name = {c.name: c for c in bench.cases(device="cuda")}
        cases = [by_name[name] if variant is None else
                 replace(by_name[name], name=variant, sampling_ratio=0)
                 for name, variant in REUSE_CASES]  # fmt: skip
    out = {}
    for case in cases:
        fns = bench._callables(case, bench.make_inputs(case, device, torch.float32))
        timed = {"torchvision": fns[("torchvision", "forward")]}
        for name, (value, least) in REUSE_SETTINGS.items():
            least = gpu_align.REUSE_MIN_POINTS if least is None else least
            timed[name] = _with_settings(fns[("roiops", "forward")], gpu_align,
                                         REUSE_LOADS=value, REUSE_MIN_POINTS=least)  # fmt: skip
        out[f"{case.op} {case.name}"] = {
            "per_call": bench.time_interleaved(timed, device, ROUNDS),
            "back_to_back": bench.time_interleaved(timed, device, ROUNDS, BACK_TO_BACK),
        }
    return out


# (outputs a program, warps) of the NCHW forward: the launchers' for a fixed sampling grid
# first, then theirs for an adaptive one (one output a thread), then the others; (channels,
# warps) of the NHWC forward, the launchers' first, and of the backward scatter RoI-major
# (the launchers' before 2026-11-27 first; theirs now: the first with RoIs innermost)
FORWARD_CONFIGS = ((64, 1), (256, 8), (32, 1), (64, 2), (128, 4), (128, 2), (256, 4), (512, 8))
# roi_align's NCHW forward with its points reusing their row's loads (REUSE_LOADS): the
# launchers' splits (a fixed grid's, an adaptive one's), and RoIs innermost as "forward"
REUSE_CONFIGS = ((64, 1), (256, 8))
# and, for an adaptive grid (sampling_ratio <= 0), with REUSE_LOADS="wide"'s per-RoI
# branch (REUSE_MIN_POINTS), RoI-major: the launchers' one output a thread (256/8, 128/4)
# against two (256/4, 128/2), which took 'a small sr=0' from 0.205 to 0.156 ms but 'a
# large sr=0' from 7.56 to 10.13 without reuse (H200, 1bb2d53)
WIDE_CONFIGS = ((256, 8), (256, 4), (128, 4), (128, 2))
NHWC_CONFIGS = ((64, 1), (32, 1), (64, 2), (128, 2), (128, 4), (256, 4))
SCATTER_CONFIGS = ((256, 8), (64, 2), (128, 2), (128, 4), (256, 4), (512, 16))
# ((bins, channels), warps) of roi_pool's backward scatter (a RoI's [bins, channels] tile)
ARGMAX_CONFIGS = (((64, 16), 4), ((64, 8), 2), ((64, 16), 2), ((64, 16), 8), ((64, 32), 4),
                  ((64, 32), 8))  # fmt: skip
# (outputs, warps) of the position-sensitive backward programs (the first is their
# launchers')
PS_SCATTER_CONFIGS = ((256, 8), (128, 4), (512, 16), (64, 2), (256, 4))
# the same kernels with RoIs innermost (``roiops.gpu.tiles``), timed as "<kind>, rois inner"
ROIS_INNER_CONFIGS = {
    "forward": ((64, 1), (256, 8), (128, 4)),
    "nhwc forward": ((64, 1), (32, 1)),
    "scatter": ((32, 1), (16, 1), (64, 2), (128, 4), (256, 8)),
    "argmax scatter": (((64, 16), 4), ((64, 8), 2), ((64, 4), 1)),
    "ps scatter": ((256, 8), (128, 4)),
}
CONFIG_CASES = (
    "a small sr=0",
    "a large sr=0",
    "a large sr=2",
    "b sr=2",
    "fpn 8x512",
    "b sr=2 NHWC",
    "a small",
    "b",
    "rfcn sr=2",
    "rfcn",
)


def kernel_configs(device: str = "cuda", cases: list | None = None) -> dict:
    """ms of the forward kernels alone (float32, the bench's inputs, a pyramid's finest
    level) under other program sizes, warp counts and program orders than the launchers'
    (a forward kernel on the case's layout, roi_pool's with its argmax; for NCHW cases of
    roi_align and roi_pool also the backward scatter), beside torchvision's forward:
    which split suits the GPU, measured rather than guessed."""
    if cases is None:
        cases = [c for c in bench.cases(device="cuda") if c.name in CONFIG_CASES]
    timers = {"roi_pool": _pool_config_times, "ps_roi_align": _ps_config_times,
              "ps_roi_pool": _ps_config_times}  # fmt: skip
    return {f"{c.op} {c.name}": timers.get(c.op, _config_times)(c, device) for c in cases}


def _level_and_torchvision_forward(case, device: str):
    """``(level, {"torchvision forward": its call})``: the case's finest level in float32
    and torchvision's forward on it, the first of a case's ``kernel_configs`` timings."""
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    lv = bench.make_inputs(case, device, torch.float32)[0]
    return lv, {"torchvision forward": bench._level_callables(case, lv)[("torchvision",
                                                                         "forward")]}  # fmt: skip


def _ps_config_times(case, device: str) -> dict:
    """The position-sensitive forwards (NCHW, R-FCN's maps), as ``_config_times``, and
    their backward scatters (ps_roi_pool's as its differences, ``BAND``)."""
    from roiops.gpu import ps_roi_pool as gps
    from roiops.gpu import roi_align as ga
    from roiops.gpu.fixed_point import Accumulator
    from roiops.gpu.rois import scale_bits

    lv, fns = _level_and_torchvision_forward(case, device)
    x, rois, p = lv.x, lv.rois, case.output_size
    K, (N, C_in, H, W) = rois.shape[0], x.shape
    C = C_in // (p * p)
    out = x.new_empty((K, C, p, p))
    bits = scale_bits(lv.spatial_scale)
    # (ps_roi_align's also with its points reusing their row's loads: REUSE_LOADS)
    reuses = ((False, "forward", FORWARD_CONFIGS),)
    if case.op == "ps_roi_align":
        reuses += ((True, "forward reuse", REUSE_CONFIGS),)
    for reuse, name, configs in reuses:
        for kind, block, warps, inner in _configs(name, configs, "forward"):
            grid = (K * triton.cdiv(C * p * p, block),)
            if case.op == "ps_roi_pool":
                fns[f"{kind} {block}/{warps}"] = partial(
                    gps.ps_roi_pool_forward_kernel[grid], x, rois, out, N, C, H, W, bits,
                    PH=p, PW=p, BLOCK=block, ROIS_INNER=inner, num_warps=warps,
                )  # fmt: skip
            else:
                fns[f"{kind} {block}/{warps}"] = partial(
                    ga.roi_align_forward_kernel[grid], x, rois, out, out, N, C, H, W, bits,
                    case.sampling_ratio, PH=p, PW=p, ALIGNED=True, MAX_MODE=False, PS=True,
                    BLOCK=block, ROIS_INNER=inner, REUSE=reuse, num_warps=warps,
                )  # fmt: skip
    band = gps.BAND if case.op == "ps_roi_pool" else 0
    sums = Accumulator(lv.grad, x.shape, bins=p * p, band=band)
    for kind, block, warps, inner in _configs("scatter", PS_SCATTER_CONFIGS, "ps scatter"):
        grid = (K * triton.cdiv(C * p * p, block),)
        if case.op == "ps_roi_pool":
            fns[f"{kind} {block}/{warps}"] = lambda g=grid, b=block, w=warps, i=inner: (
                gps.ps_roi_pool_backward_kernel[g](
                    lv.grad, rois, sums.amax, sums.acc, N, C, H, W, bits, sums.log2_count,
                    PH=p, PW=p, BLOCK=b, ROIS_INNER=i, BAND=band, num_warps=w,
                )
            )  # fmt: skip
        else:
            fns[f"{kind} {block}/{warps}"] = lambda g=grid, b=block, w=warps, i=inner: (
                ga.ps_roi_align_backward_kernel[g](
                    lv.grad, rois, sums.amax, sums.acc, N, C, H, W, bits,
                    case.sampling_ratio, sums.log2_count, PH=p, PW=p, ALIGNED=True, BLOCK=b,
                    SPAN=ga.SPAN, ROIS_INNER=i, num_warps=w,
                )
            )  # fmt: skip
    return bench.time_interleaved(fns, device, ROUNDS)


def _config_times(case, device: str) -> dict:
    from roiops.gpu import roi_align as ga
    from roiops.gpu.fixed_point import Accumulator
    from roiops.gpu.rois import scale_bits

    lv, fns = _level_and_torchvision_forward(case, device)
    x, rois, grad, p = lv.x, lv.rois, lv.grad, case.output_size
    K, (N, C, H, W) = rois.shape[0], x.shape
    out = x.new_empty((K, C, p, p))
    args = (rois, out, out, N, C, H, W, scale_bits(lv.spatial_scale), case.sampling_ratio)
    mode = dict(PH=p, PW=p, ALIGNED=case.aligned, MAX_MODE=False, PS=False)
    if case.channels_last:
        for kind, block_c, warps, inner in _configs("nhwc forward", NHWC_CONFIGS):
            grid = (K * p * p * triton.cdiv(C, block_c),)
            fns[f"{kind} {block_c}/{warps}"] = lambda g=grid, b=block_c, w=warps, i=inner: (
                ga.roi_align_forward_nhwc_kernel[g](
                    x, *args, **mode, BLOCK_C=b, ROIS_INNER=i, num_warps=w
                )  # fmt: skip
            )
    else:
        # (and with the points reusing their row's loads: REUSE_LOADS; "wide"'s branch
        # for an adaptive grid)
        series = [(False, 0, _configs("forward", FORWARD_CONFIGS)),
                  (True, 0, _configs("forward reuse", REUSE_CONFIGS, "forward"))]  # fmt: skip
        if case.sampling_ratio <= 0:
            wide = (("forward wide", b, w, False) for b, w in WIDE_CONFIGS)
            series.append((True, ga.REUSE_MIN_POINTS, wide))
        for reuse, least, configs in series:
            for kind, block, warps, inner in configs:
                grid = (K * triton.cdiv(C * p * p, block),)
                fns[f"{kind} {block}/{warps}"] = partial(
                    ga.roi_align_forward_kernel[grid], x, *args, **mode, BLOCK=block,
                    ROIS_INNER=inner, REUSE=reuse, REUSE_MIN=least, num_warps=warps,
                )  # fmt: skip
        sums = Accumulator(grad, x.shape)
        for kind, block_c, warps, inner in _configs("scatter", SCATTER_CONFIGS):
            grid = (K * p * p * triton.cdiv(C, block_c),)
            fns[f"{kind} {block_c}/{warps}"] = (
                lambda g=grid, b=block_c, w=warps, i=inner: ga.roi_align_backward_kernel[g](
                    grad, rois, rois, sums.amax, sums.acc, N, C, H, W,
                    scale_bits(lv.spatial_scale), case.sampling_ratio, sums.log2_count,
                    **mode, BLOCK_C=b, SPAN=ga.SPAN, ARGMAX_CM=True, ROIS_INNER=i, num_warps=w,
                )
            )  # fmt: skip
    return bench.time_interleaved(fns, device, ROUNDS)


def _pool_config_times(case, device: str) -> dict:
    from roiops.gpu import roi_pool as gp
    from roiops.gpu.fixed_point import Accumulator
    from roiops.gpu.rois import scale_bits

    lv, fns = _level_and_torchvision_forward(case, device)
    x, rois, grad, p = lv.x.contiguous(), lv.rois, lv.grad, case.output_size
    K, (N, C, H, W) = rois.shape[0], x.shape
    # the forward's argmax, which every timed forward writes again and the scatter reads
    out, argmax = gp.roi_pool_forward(x, rois, lv.spatial_scale, p, p, nhwc=False)
    args = (rois, out, argmax, N, C, H, W, scale_bits(lv.spatial_scale))
    # (and each visiting its bins 2x2 cells at a time: VISIT_2X2)
    for visit_2x2, name in ((False, "forward"), (True, "forward 2x2")):
        for kind, block, warps, inner in _configs(name, FORWARD_CONFIGS, "forward"):
            grid = (K * triton.cdiv(C * p * p, block),)
            fns[f"{kind} {block}/{warps}"] = partial(
                gp.roi_pool_forward_kernel[grid], x, *args, PH=p, PW=p, BLOCK=block,
                STORE_ARGMAX=True, ROIS_INNER=inner, VISIT_2X2=visit_2x2, num_warps=warps,
            )  # fmt: skip
    sums = Accumulator(grad, x.shape)
    for kind, (block_p, block_c), warps, inner in _configs(
        "scatter", ARGMAX_CONFIGS, "argmax scatter"
    ):
        grid = (K * triton.cdiv(C, block_c),)
        fns[f"{kind} {block_p}x{block_c}/{warps}"] = (
            lambda g=grid, bp=block_p, bc=block_c, w=warps, i=inner: gp.roi_pool_backward_kernel[g](
                grad, rois, argmax, sums.amax, sums.acc, rois, N, C, H, W, sums.log2_count,
                P=p * p, BLOCK_P=bp, BLOCK_C=bc, ARGMAX_CM=True, ROIS_INNER=i, num_warps=w,
            )
        )  # fmt: skip
    return bench.time_interleaved(fns, device, ROUNDS)


def _configs(kind: str, configs, inner_kind: str | None = None):
    """``(label, size, warps, rois_inner)``: ``configs`` of ``kind`` in the RoI-major
    order, then ``ROIS_INNER_CONFIGS[inner_kind or kind]`` with RoIs innermost."""
    for size, warps in configs:
        yield kind, size, warps, False
    for size, warps in ROIS_INNER_CONFIGS[inner_kind or kind]:
        yield f"{kind}, rois inner", size, warps, True


def summary(report: dict) -> str:
    """The one table `make gpu` ends with; a part that failed or did not run says so."""
    lines = [f"roiops on {report['gpu']} (torch {report['torch']}, triton {report['triton']})"]
    lines.append(f"{'what':<58} {'measured':>14} {'target':>10}")

    def row(what, value, target=""):
        lines.append(f"{what:<58} {value:>14} {target:>10}")

    check = report.get("launch_check")
    if check is not None:
        verdict = ("switched off" if check["switched_off"] else "same bits" if check["ok"]
                   else "DIFFER: ran on Triton's path")  # fmt: skip
        row("direct launches against Triton's path (roi_align, roi_pool)", verdict,
            "same bits")  # fmt: skip
    t = report["tests"]
    row("compiled Triton + CUDA tests", " ".join(f"{v} {k}" for k, v in t["counts"].items()),
        "all pass")  # fmt: skip
    for dtype in ("float32", "float16"):
        rows = report["bench"].get(dtype)
        if rows is None:
            row(f"{dtype} bench", "not measured")
            continue
        for direction, target in (("forward", ">= 1.5x"), ("backward", ">= 1.0x"),
                                  ("inference", "")):  # fmt: skip
            sel = [r for r in rows if r["direction"] == direction]
            if not sel:
                continue
            gm = bench.geometric_mean(r["speedup"] for r in sel)
            worst = min(sel, key=lambda r: r["speedup"])
            row(f"{dtype} {direction}: geometric mean vs torchvision", f"{gm:.2f}x", target)
            floor = {"forward": ">= 1.0x", "backward": ">= 0.7x"}.get(direction, "")
            row(f"{dtype} {direction}: lowest ({worst['op']} {worst['case']})",
                f"{worst['speedup']:.2f}x", floor)  # fmt: skip
        for r in rows:
            if r["case"].startswith("fpn") and r["direction"] == "forward":
                row(f"{dtype} forward: {r['case']}", f"{r['speedup']:.2f}x", ">= 1.2x")
    rows = report["bench"].get("back_to_back")
    for direction in ("forward", "backward", "inference", "train"):
        sel = [r["speedup"] for r in rows or () if r["direction"] == direction]
        if sel:
            row(f"float32 back to back, {direction}: geometric mean",
                f"{bench.geometric_mean(sel):.2f}x")  # fmt: skip
    lat = report.get("latency")
    if lat is None:
        row("16-RoI roi_align call latency", "not measured")
    else:
        row("16-RoI roi_align call, host us: roiops / torchvision",
            f"{lat['roiops_us']:.0f} / {lat['torchvision_us']:.0f}", "<= 2x")  # fmt: skip
        if "launcher_us" in lat:
            row("16-RoI call, host us: launcher alone / recording autograd",
                f"{lat['launcher_us']:.0f} / {lat['recording_autograd_us']:.0f}")  # fmt: skip
        if "ops_forward_us" in lat:
            us = [lat[f"{lib}ops_{d}_us"] for d in ("forward", "backward")
                  for lib in ("", "torchvision_")]  # fmt: skip
            row("16-RoI torch.ops calls, host us: fwd roiops / tv, bwd roiops / tv",
                f"{us[0]:.0f} / {us[1]:.0f}, {us[2]:.0f} / {us[3]:.0f}")  # fmt: skip
        if "ops_roi_pool_forward_us" in lat:
            us = [lat[f"{lib}ops_{op}_forward_us"] for op in ("roi_pool", "ps_roi_pool")
                  for lib in ("", "torchvision_")]  # fmt: skip
            row("16-RoI torch.ops fwd, host us: roi_pool roiops / tv, ps_roi_pool roiops / tv",
                f"{us[0]:.0f} / {us[1]:.0f}, {us[2]:.0f} / {us[3]:.0f}")  # fmt: skip
        if "launch_us" in lat:
            row("roi_align's kept launch, host us: whole / fire / fire as Triton's path",
                f"{lat['launch_us']:.1f} / {lat['fire_us']:.1f} / "
                f"{lat['fire_as_triton_us']:.1f}")  # fmt: skip
        if "ops_forward_after_sync_us" in lat:
            for when, what in (("sync", "a sync"), ("wait", f"a {WAIT_US} us wait")):
                names = ("ops_forward", "torchvision_ops_forward", "launcher")
                us = [lat[f"{name}_after_{when}_us"] for name in names]
                row(f"16-RoI fwd after {what}, host us: torch.ops roiops / tv, launcher",
                    f"{us[0]:.0f} / {us[1]:.0f}, {us[2]:.0f}")  # fmt: skip
    det = report.get("deterministic")
    if det is None:
        row("deterministic mode and distinct gradients", "not measured")
    else:
        row("fwd+bwd vs torchvision deterministic mode",
            f"{det['torchvision_deterministic_ms'] / det['roiops_ms']:.1f}x", ">= 20x")  # fmt: skip
        d = det["distinct_gradients_of_5"]
        row("distinct gradients in 5 runs: roiops / torchvision",
            f"{d['roiops']} / {d['torchvision']}", "1 / any")  # fmt: skip
    order = report.get("program_order")
    for name in PROGRAM_ORDERS if order else ():
        for direction in ("forward", "backward", "inference", "train"):
            sel = [r["ms"] for r in order if r["direction"] == direction]
            if sel:
                vs_tv = bench.geometric_mean(t["torchvision"] / t[name] for t in sel)
                vs_ours = bench.geometric_mean(t["roiops"] / t[name] for t in sel)
                row(f"float32 {direction}, {name}: vs torchvision / vs launchers' order",
                    f"{vs_tv:.2f}x / {vs_ours:.2f}x")  # fmt: skip
    for case, t in report.get("forward_layouts", {}).items():
        row(f"NCHW map, {case}: NCHW kernel / copy + NHWC kernel, ms",
            f"{t['nchw_ms']:.2f} / {t['copy_then_nhwc_ms']:.2f}")  # fmt: skip
    for case, t in report.get("backward_passes", {}).items():
        # (the zeroing and max |grad| the launchers take: TORCH_BOUND_GRADIENTS)
        first = "zeros_then_vector_norm" if t.get("torch_bound") else "zero_and_bound"
        ours = " + ".join(f"{t[k]:.2f}" for k in (first, "scatter", "convert"))
        row(f"{case} bwd ms: zero and max|g| + scatter + convert / op / tv",
            f"{ours} / {t['roiops_backward']:.2f} / {t['torchvision_backward']:.2f}")  # fmt: skip
        row(f"{case} bwd ms, zero and max|g|: one launch / torch.zeros + vector_norm",
            f"{t['zero_and_bound']:.3f} / {t['zeros_then_vector_norm']:.3f}")  # fmt: skip
        if "roiops_backward_other_bound" in t:
            how = ("torch's two calls / one launch" if t.get("torch_bound")
                   else "one launch / torch's two calls")  # fmt: skip
            row(f"{case} bwd ms, the op with zero and max|g| by {how}",
                f"{t['roiops_backward']:.3f} / {t['roiops_backward_other_bound']:.3f}")  # fmt: skip
        for other in sorted(int(k.rsplit("_", 1)[1]) for k in t if k.startswith("scatter_band_")):
            how = f"in bands of {other} rows" if other else "cell by cell"
            row(f"{case} bwd ms, sums {how}: scatter + convert / op",
                f"{t[f'scatter_band_{other}']:.2f} + {t[f'convert_band_{other}']:.2f} / "
                f"{t[f'roiops_backward_band_{other}']:.2f}")  # fmt: skip
        if "scatter_per_bin" in t:
            row(f"{case} bwd ms, a program per bin: scatter / op",
                f"{t['scatter_per_bin']:.2f} / {t['roiops_backward_per_bin']:.2f}")  # fmt: skip
        passes = ("zero_and_bound", "scatter", "convert")
        if all(f"{name} back to back" in t for name in passes):
            row(f"{case} bwd GPU ms (back to back): zero and max|g| + scatter + convert",
                " + ".join(f"{t[f'{name} back to back']:.3f}" for name in passes))  # fmt: skip
        if "roiops_backward_regions" in t:
            regions = ("regions", "zero_regions_and_bound", "scatter_regions", "convert_regions")
            how = "chosen" if t["regions_chosen"] else "not chosen"
            row(f"{case} bwd ms, sums in regions ({how}): regions + zero + scatter + convert / op",
                " + ".join(f"{t[name]:.2f}" for name in regions)
                + f" / {t['roiops_backward_regions']:.2f}")  # fmt: skip
            if all(f"{name} back to back" in t for name in regions):
                row(f"{case} bwd GPU ms (back to back), sums in regions",
                    " + ".join(f"{t[f'{name} back to back']:.3f}" for name in regions))  # fmt: skip
        if "roiops_backward_each" in t:
            names = ("scatter_each", "scatter_each back to back", "roiops_backward_each")
            ms = [t[name] for name in names]
            row(f"{case} bwd ms, an atomic a bin (no runs): scatter (back to back) / op",
                f"{ms[0]:.2f} ({ms[1]:.3f}) / {ms[2]:.2f}")  # fmt: skip
    for case, t in report.get("kernel_configs", {}).items():
        row(f"{case}: torchvision forward, ms", f"{t['torchvision forward']:.3f}")
        for kind in ("forward", "nhwc forward", "scatter", "forward, rois inner",
                     "nhwc forward, rois inner", "scatter, rois inner", "forward 2x2",
                     "forward 2x2, rois inner", "forward reuse",
                     "forward reuse, rois inner", "forward wide"):  # fmt: skip
            timed = {k.split()[-1]: v for k, v in t.items() if k.rsplit(" ", 1)[0] == kind}
            if timed:
                first, best = next(iter(timed)), min(timed, key=timed.get)
                row(f"{case}: {kind} {first} / best {best} (program/warps), ms",
                    f"{timed[first]:.3f} / {timed[best]:.3f}")  # fmt: skip
    for name, rows in report.get("side", {}).items():
        for r in rows:
            libraries = [k for k in r if k not in ("case", "direction")]
            row(f"{name} {r['case']} {r['direction']}, ms: {' / '.join(libraries)}",
                " / ".join(f"{r[k]:.2f}" for k in libraries))  # fmt: skip
    for case, t in report.get("reuse_loads", {}).items():
        names = list(t["back_to_back"])
        row(f"{case} fwd ms back to back: {' / '.join(names)}",
            " / ".join(f"{t['back_to_back'][n]:.3f}" for n in names))  # fmt: skip
    if "run_s" in report:
        # the limit applies to `make gpu`'s parts (a run of others shows its time only)
        limit = f"<= {CHECK_LIMIT_S} s" if set(report["parts"]) >= set(CHECK_PARTS) else ""
        row("this run's time after its imports, s", f"{report['run_s']:.0f}", limit)
        if report.get("compile_s"):
            # (the tests' and the warm-up's compiling runs in their own processes)
            compiling = sum(report["compile_s"].values())
            count = sum(report.get("compiles", {}).values())
            row("of which compiling in the timed parts (kernels), s",
                f"{compiling:.0f} ({count})")  # fmt: skip
        if "warm_up" in report:
            row("warm-up (beside the tests), waited for, s", f"{report['seconds']['warm_up']:.0f}")
    for key in report.get("errors", {}):
        row(f"FAILED: {key} (traceback above and in the JSON)", "error")
    return "\n".join(lines)


def section(report: dict, key: str, measure, path: str | None, into: dict | None = None):
    """``(into or report)[key] = measure()``; an exception is recorded in
    ``report["errors"]`` (and printed), not raised, so one failing part does not cost the
    rest of a GPU run. The report so far is written to ``path`` after every part, so a run
    stopped by a time limit keeps what it measured."""
    started = time.perf_counter()
    with CompileClock() as compiling:
        try:
            (report if into is None else into)[key] = measure()
        except Exception:  # noqa: BLE001 -- a GPU run reports every part it can
            report.setdefault("errors", {})[key] = traceback.format_exc()
            print(f"{key} failed:\n{report['errors'][key]}", flush=True)
    seconds = time.perf_counter() - started
    report.setdefault("seconds", {})[key] = round(seconds, 1)
    report.setdefault("compile_s", {})[key] = round(compiling.seconds, 1)
    report.setdefault("compiles", {})[key] = compiling.count
    print(f"[{key}: {seconds:.0f} s, of which {compiling.seconds:.0f} s compiling "
          f"{compiling.count} kernels in this process]", flush=True)  # fmt: skip
    write_report(report, path)


class CompileClock:
    """Inside ``with``: the kernels Triton compiles in this process (or loads from its disk
    cache: a first use) and the seconds that takes, from Triton's hooks before and after a
    compilation (``triton.knobs.runtime``; the interpreter compiles nothing). What a GPU
    run's time limit is spent on beside the timings."""

    def __init__(self):
        self.seconds, self.count, self._started = 0.0, 0, None

    def _before(self, **_):
        self._started = time.perf_counter()
        return None  # (a true value would tell Triton to skip the compilation)

    def _after(self, **_):
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.count += 1
            self._started = None

    def __enter__(self):
        hooks = triton.knobs.runtime
        self._saved = hooks.jit_cache_hook, hooks.jit_post_compile_hook
        hooks.jit_cache_hook, hooks.jit_post_compile_hook = self._before, self._after
        return self

    def __exit__(self, *_):
        hooks = triton.knobs.runtime
        hooks.jit_cache_hook, hooks.jit_post_compile_hook = self._saved


def write_report(report: dict, path: str | None) -> None:
    """The report so far as JSON at ``path`` (if any)."""
    if path:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(json.dumps(report, indent=2))


# parts whose kernels WARM_WORKERS processes compile before they are timed (``warm_up``)
WARM_PARTS = ("float32", "float16", "program_order", "forward_layouts", "backward_passes",
              "kernel_configs")  # fmt: skip
WARM_WORKERS = TEST_WORKERS


def warm_up(parts: list[str], quick: bool) -> list:
    """Start WARM_WORKERS processes that run ``parts`` (those in WARM_PARTS) with every
    timing replaced by one call of each timed function, shared out among them
    (``sharded_calls``), so that Triton compiles the kernels into its disk cache on the
    host's cores side by side; the timed run then loads them (tens of ms each) instead of
    compiling them one after another. ``finish_warm_up`` waits for them."""
    chosen = [p for p in parts if p in WARM_PARTS]
    if not chosen or WARM_WORKERS < 2:
        return []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--parts", *chosen]
    command += ["--quick"] if quick else []
    runs = []
    for i in range(WARM_WORKERS):
        log = tempfile.TemporaryFile("w+")  # (a pipe left unread could block a worker)
        shard = ["--warm-shard", f"{i}/{WARM_WORKERS}"]
        run = subprocess.Popen([*command, *shard], cwd=ROOT, env=env, stdout=log, stderr=log)
        runs.append((run, log))
    return runs


def finish_warm_up(runs: list, timeout_s: float) -> dict:
    """Wait for ``warm_up``'s processes (at most ``timeout_s`` in all; then they are
    stopped: what they compiled is cached). A failed one only leaves its kernels to be
    compiled by the timed run."""
    started = time.perf_counter()
    codes, errors = [], []
    for run, log in runs:
        try:
            run.wait(timeout=max(timeout_s - (time.perf_counter() - started), 1))
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
        codes.append(run.returncode)
        if run.returncode:
            log.seek(0)
            errors.append("\n".join(log.read().strip().splitlines()[-10:]))
        log.close()
    return {"workers": len(runs), "returncodes": codes, "errors": errors}


def sharded_calls(shard: int, count: int) -> None:
    """Make this process a warm-up worker: ``bench.time_interleaved`` (through which every
    part times) calls each function it is given once, and only every ``count``-th one
    from ``shard`` on, counted across the whole run, and returns NaN times. The workers
    run the same parts in the same order, so between them they call every function."""
    numbers = itertools.count()

    def call_share(fns, device, repeat, calls=1):
        for fn in fns.values():
            if next(numbers) % count == shard:
                fn()
        bench._sync(device)
        return dict.fromkeys(fns, float("nan"))

    bench.time_interleaved = call_share


# timed rounds at least, for each figure of the parts beyond the bench (more for short
# calls: bench.time_interleaved)
ROUNDS = 5

# the back-to-back bench: calls a sample (see bench.time_interleaved)
BACK_TO_BACK_CALLS = 10


def bench_rows(dtype: torch.dtype, name: str, quick: bool, calls: int = 1) -> list[dict]:
    rows = bench.run("cuda", dtype, quick=quick, progress=False, calls=calls)
    print(bench.format_table(rows, f"roiops vs torchvision, {name}"), flush=True)
    return [{**r.__dict__, "speedup": r.speedup} for r in rows]


# the benchmarks/ scripts of ops with their own anchors (``roiops.bench.side_benchmark``)
SIDE_BENCHMARKS = ("simple_roi_align", "riroi_align_rotated", "deform_roi_pool",
                   "deform_ps_roi_pool", "crop_and_resize")  # fmt: skip


def side_benchmark(name: str, repeat: int = ROUNDS) -> list[dict]:
    """The rows of ``benchmarks/<name>.py`` run on its CUDA cases."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--device", "cuda", "--repeat", str(repeat)])


# what a run can measure, in this order
# (torchvision's deterministic mode is slow to run: ~90 s on an H100 machine, last)
PARTS = ("tests", "float32", "float16", "back_to_back", "latency", "program_order",
         "forward_layouts", "backward_passes", "kernel_configs", "reuse_loads", "side",
         "deterministic")  # fmt: skip
# what `make gpu` runs, within issue 9's 8 minutes with the compilation: the compiled
# tests, the bench in both dtypes, latency and the deterministic-mode and determinism
# check (~230 + 100 + 95 s on an H100 machine)
CHECK_PARTS = ("tests", "float32", "float16", "back_to_back", "latency", "deterministic")
# what `make gpu-tune` runs: the measurements the launchers' choices were made from
# (program order, layouts, the backward's passes, program sizes; kernel_configs compiles
# ~70 kernel variants)
TUNING_PARTS = ("program_order", "forward_layouts", "backward_passes", "kernel_configs",
                "reuse_loads")  # fmt: skip
# names for several parts at once
PART_GROUPS = {"all": PARTS, "tuning": TUNING_PARTS}
# `make gpu`'s time limit (issue 9), against which a run's time is shown
CHECK_LIMIT_S = 480
# the longest the timed parts wait for warm_up's processes
WARM_TIMEOUT_S = 240


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the whole report as JSON to this path")
    parser.add_argument("--quick", action="store_true", help="the quick benchmark cases")
    parser.add_argument("--skip-tests", action="store_true", help="all parts but the tests")
    parser.add_argument("--parts", nargs="+", choices=(*PARTS, *PART_GROUPS),
                        default=CHECK_PARTS, metavar="PART",
                        help=f"run these parts (default: {' '.join(CHECK_PARTS)}; "
                             f"'tuning': {' '.join(TUNING_PARTS)}; 'all'; any of "
                             f"{' '.join(PARTS)})")  # fmt: skip
    parser.add_argument("--tests-timeout", type=float, default=300.0,
                        help="stop the test run after this many seconds")  # fmt: skip
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="compile each kernel where it is first timed (no warm_up)",
    )
    parser.add_argument("--warm-shard", help=argparse.SUPPRESS)  # a warm_up worker: i/n
    # launch_check_in_a_process's process: the verdict on the device, as a last JSON line
    parser.add_argument("--launch-check", metavar="DEVICE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launch_check:
        print(json.dumps(launch_check(args.launch_check)))
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("gpu_report needs a CUDA GPU")

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    report = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "tests": {"counts": {}, "ok": None},
        "bench": {},
    }
    chosen = {part for name in args.parts for part in PART_GROUPS.get(name, (name,))}
    parts = [p for p in PARTS if p in chosen and not (args.skip_tests and p == "tests")]
    if args.warm_shard:
        sharded_calls(*map(int, args.warm_shard.split("/")))
        parts = [p for p in parts if p in WARM_PARTS]
        args.json = None
    # before anything else, so that the processes it starts inherit its verdict
    if not args.warm_shard:
        section(report, "launch_check", launch_check_in_a_process, args.json)
    # the warm-up compiles beside the tests (both are mostly Triton's compiler)
    warming = [] if args.no_warm_up or args.warm_shard else warm_up(parts, args.quick)
    if "tests" in parts:
        section(report, "tests", lambda: run_tests(args.tests_timeout), args.json)
    if warming:
        section(report, "warm_up", lambda: finish_warm_up(warming, WARM_TIMEOUT_S), args.json)
    for name, dtype, calls in (("float32", torch.float32, 1), ("float16", torch.float16, 1),
                               ("back_to_back", torch.float32, BACK_TO_BACK_CALLS)):  # fmt: skip
        if name in parts:
            title = name if calls == 1 else f"float32, {calls} calls back to back a sample"
            measure = lambda d=dtype, t=title, c=calls: bench_rows(d, t, args.quick, c)  # noqa: E731
            section(report, name, measure, args.json, into=report["bench"])
    measures = {
        "latency": lambda: latency(rng),
        "program_order": program_order,
        "forward_layouts": lambda: forward_layouts(rng),
        "backward_passes": backward_passes,
        "kernel_configs": kernel_configs,
        "reuse_loads": reuse_loads,
        "deterministic": lambda: deterministic_mode(rng),
    }
    for key in parts:
        if key in measures:
            section(report, key, measures[key], args.json)
        elif key == "side":  # (each script its own section: one failing costs no other)
            for name in SIDE_BENCHMARKS:
                section(report, name, partial(side_benchmark, name), args.json,
                        into=report.setdefault("side", {}))  # fmt: skip
    if args.warm_shard:
        return 0
    report["run_s"] = round(time.perf_counter() - started, 1)
    report["parts"] = parts
    write_report(report, args.json)
    print()
    print(summary(report))
    return 0 if report["tests"]["ok"] in (True, None) and "errors" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
