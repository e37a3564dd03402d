"""`make gpu`'s report: its summary table from a report's numbers (the GPU part runs only
on a CUDA machine; this checks the table it ends with)."""

import json
import re
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import load_benchmark


def load():
    return load_benchmark("gpu_report")


def tiny_case(op: str, name: str = "tiny", channels: int = 3, rois: int = 4, **kwargs):
    """A bench case small enough for Triton's interpreter: 10 x 12 cells, 2 x 2 bins."""
    from roiops import bench

    return bench.Case(name, op, (1, channels, 10, 12), rois, (8, 30), spatial_scale=1 / 4,
                      output_size=2, **kwargs)  # fmt: skip


def plumbing_only(monkeypatch, gpu_report):
    """One timed round a figure, however short: these tests check the plumbing, not speed
    (on CPU the Triton interpreter runs every program of every call)."""
    monkeypatch.setattr(gpu_report.bench, "MIN_TIMED_S", 0.0)
    monkeypatch.setattr(gpu_report, "ROUNDS", 1)
    monkeypatch.setattr(gpu_report, "BACK_TO_BACK", 1)


def test_summary_table():
    gpu_report = load()

    def row(case, op, direction, tv, ro):
        return dict(case=case, op=op, direction=direction, torchvision_ms=tv, roiops_ms=ro,
                    speedup=tv / ro)  # fmt: skip

    rows = [
        row("a small sr=2", "roi_align", "forward", 0.3, 0.2),
        row("fpn 8x512", "roi_align", "forward", 1.2, 1.0),
        row("a small sr=2", "roi_align", "backward", 1.0, 2.0),
        row("b", "roi_pool", "inference", 1.0, 0.5),
    ]
    report = {
        "gpu": "NVIDIA H200",
        "torch": "2.11",
        "triton": "3.6",
        "tests": {"counts": {"passed": 80, "failed": 1}, "ok": False},
        "bench": {"float32": rows, "float16": rows, "back_to_back": rows},
        "latency": {
            "roiops_us": 30.0,
            "torchvision_us": 20.0,
            "launcher_us": 12.0,
            "recording_autograd_us": 41.0,
            "ops_forward_us": 26.0,
            "torchvision_ops_forward_us": 11.0,
            "ops_backward_us": 52.0,
            "torchvision_ops_backward_us": 13.0,
            "ops_roi_pool_forward_us": 24.0,
            "torchvision_ops_roi_pool_forward_us": 10.0,
            "ops_ps_roi_pool_forward_us": 21.0,
            "torchvision_ops_ps_roi_pool_forward_us": 9.0,
            "launch_us": 12.5,
            "fire_us": 8.5,
            "fire_as_triton_us": 11.25,
            "ops_forward_after_sync_us": 33.0,
            "torchvision_ops_forward_after_sync_us": 21.0,
            "launcher_after_sync_us": 19.0,
            "ops_forward_after_wait_us": 77.0,
            "torchvision_ops_forward_after_wait_us": 22.0,
            "launcher_after_wait_us": 22.0,
        },
        "deterministic": {
            "roiops_ms": 1.0,
            "torchvision_deterministic_ms": 25.0,
            "distinct_gradients_of_5": {"roiops": 1, "torchvision": 5},
        },
        "forward_layouts": {"roi_align b": {"nchw_ms": 0.5, "copy_then_nhwc_ms": 0.75}},
        "launch_check": {"ok": False, "differ": ["roi_pool, call 2"], "error": None,
                         "switched_off": False},
    }  # fmt: skip
    table = gpu_report.summary(report)
    assert "direct launches against Triton's path" in table
    assert "DIFFER: ran on Triton's path" in table
    report["launch_check"]["ok"] = True
    assert "same bits" in gpu_report.summary(report).split("compiled Triton")[0]
    report["launch_check"]["switched_off"] = True
    assert "switched off" in gpu_report.summary(report)
    assert "80 passed 1 failed" in table
    assert "float32 forward: geometric mean vs torchvision" in table
    assert "1.34x" in table  # sqrt(1.5 * 1.2)
    assert "float32 backward: lowest (roi_align a small sr=2)" in table and "0.50x" in table
    assert "float32 forward: fpn 8x512" in table and "1.20x" in table
    assert "float32 back to back, forward: geometric mean" in table
    assert "launcher alone / recording autograd" in table and "12 / 41" in table
    assert "fwd roiops / tv, bwd roiops / tv" in table and "26 / 11, 52 / 13" in table
    assert "roi_pool roiops / tv, ps_roi_pool roiops / tv" in table and "24 / 10, 21 / 9" in table
    assert "kept launch, host us: whole / fire / fire as Triton's path" in table
    assert "12.5 / 8.5 / 11.2" in table
    assert "16-RoI fwd after a sync, host us: torch.ops roiops / tv, launcher" in table
    assert "16-RoI fwd after a 200 us wait, host us" in table and "77 / 22, 22" in table
    assert "roi_align b: NCHW kernel / copy + NHWC kernel, ms" in table and "0.50 / 0.75" in table
    assert "30 / 20" in table and "25.0x" in table and "1 / 5" in table


def test_a_failing_part_is_recorded_and_the_rest_still_runs(tmp_path):
    gpu_report = load()
    path = tmp_path / "cuda.json"
    report = {"gpu": "NVIDIA H100", "torch": "2.11", "triton": "3.6",
              "tests": {"counts": {}, "ok": None}, "bench": {}}  # fmt: skip

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    gpu_report.section(report, "latency", broken, str(path))
    gpu_report.section(report, "deterministic", lambda: {"roiops_ms": 1.0,
                       "torchvision_deterministic_ms": 30.0,
                       "distinct_gradients_of_5": {"roiops": 1, "torchvision": 4}},
                       str(path))  # fmt: skip
    assert "illegal memory access" in report["errors"]["latency"]
    assert "latency" not in report
    saved = json.loads(path.read_text())  # written after every part
    assert saved["deterministic"]["roiops_ms"] == 1.0 and "latency" in saved["errors"]
    table = gpu_report.summary(report)
    assert "float32 bench" in table and "not measured" in table
    assert "30.0x" in table and "1 / 4" in table
    assert "FAILED: latency" in table


def test_each_part_records_the_kernels_compiled_in_it_and_their_time(tmp_path):
    import triton

    gpu_report = load()
    report = {}
    hooks = triton.knobs.runtime

    def compiles_twice():
        # what Triton does around each compilation (the interpreter compiles nothing)
        for _ in range(2):
            assert hooks.jit_cache_hook(key="k") is None  # None: Triton compiles it
            time.sleep(0.05)
            hooks.jit_post_compile_hook(key="k")
        return {}

    gpu_report.section(report, "float32", compiles_twice, str(tmp_path / "cuda.json"))
    gpu_report.section(report, "latency", dict, None)
    assert report["compiles"] == {"float32": 2, "latency": 0}
    assert 0.1 <= report["compile_s"]["float32"] <= report["seconds"]["float32"] + 0.1
    assert hooks.jit_cache_hook is None and hooks.jit_post_compile_hook is None


def test_a_test_run_past_its_time_is_stopped():
    gpu_report = load()
    result = gpu_report.run_tests(timeout_s=0.5)
    assert result["ok"] is False and result["seconds"] < 30


def test_test_processes_share_the_tests_out_and_their_counts_add_up(monkeypatch):
    gpu_report = load()
    # tests of two modules, one with a module-scoped fixture (test_onnx.py's ``data``),
    # named one by one: each runs once, in one of the processes
    chosen = (
        "tests/test_gpu_report.py::test_summary_table",
        "tests/test_onnx.py::test_opset_22_roi_align_matches_onnx_reference_evaluator"
        "[16-torchscript]",
        "tests/test_onnx.py::test_opset_22_roi_align_matches_onnx_reference_evaluator"
        "[22-torchscript]",
        "tests/test_onnx.py::test_aligned_needs_opset_16_with_the_torchscript_exporter",
    )
    monkeypatch.setattr(gpu_report, "TEST_ARGS", chosen)
    result = gpu_report.run_tests(timeout_s=300, workers=3)
    assert result["ok"] is True and result["workers"] == 3
    assert result["counts"] == {"passed": len(chosen)}
    # shared out: each test once, in at least two processes (the last to start may find
    # every test taken)
    ran = [int(n) for n in re.findall(r"(\d+) passed", result["log"])]
    assert sum(ran) == len(chosen) and len(ran) >= 2


def test_kernel_configs_time_each_split_on_small_cases(monkeypatch):
    import torch

    gpu_report = load()
    plumbing_only(monkeypatch, gpu_report)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # one program size of each kind in each order (the interpreter runs every program)
    monkey = {
        "FORWARD_CONFIGS": ((64, 2),),
        "REUSE_CONFIGS": ((64, 2),),
        "WIDE_CONFIGS": ((64, 2),),
        "NHWC_CONFIGS": ((4, 1),),
        "SCATTER_CONFIGS": ((4, 1),),
        "ARGMAX_CONFIGS": (((4, 2), 1),),
        "PS_SCATTER_CONFIGS": ((64, 2),),
        "ROIS_INNER_CONFIGS": {
            "forward": ((32, 1),),
            "nhwc forward": ((2, 1),),
            "scatter": ((2, 1),),
            "argmax scatter": (((2, 4), 1),),
            "ps scatter": ((32, 1),),
        },
    }
    for name, value in monkey.items():
        setattr(gpu_report, name, value)
    cases = [
        tiny_case("roi_align"),
        tiny_case("roi_align", "tiny sr=0", sampling_ratio=0),
        tiny_case("roi_align", "tiny NHWC", channels_last=True),
        tiny_case("roi_pool"),
        tiny_case("ps_roi_pool", "tiny ps", channels=12),
        tiny_case("ps_roi_align", "tiny ps", channels=12),
    ]
    times = gpu_report.kernel_configs(device, cases)
    forwards = {"torchvision forward", "forward 64/2", "forward, rois inner 32/1"}
    # (roi_align's NCHW forward also with its points reusing their row's loads)
    reuse = {"forward reuse 64/2", "forward reuse, rois inner 32/1"}
    assert set(times["roi_align tiny"]) == forwards | reuse | {
        "scatter 4/1",
        "scatter, rois inner 2/1",
    }
    # (and, on an adaptive grid, with REUSE_LOADS="wide"'s branch, RoI-major)
    assert set(times["roi_align tiny sr=0"]) == set(times["roi_align tiny"]) | {"forward wide 64/2"}
    assert set(times["roi_align tiny NHWC"]) == {
        "torchvision forward",
        "nhwc forward 4/1",
        "nhwc forward, rois inner 2/1",
    }
    # (roi_pool's forward also visiting its bins 2x2 cells at a time)
    assert set(times["roi_pool tiny"]) == forwards | {
        "forward 2x2 64/2",
        "forward 2x2, rois inner 32/1",
        "scatter 4x2/1",
        "scatter, rois inner 2x4/1",
    }
    ps_scatter = {"scatter 64/2", "scatter, rois inner 32/1"}
    assert set(times["ps_roi_pool tiny ps"]) == forwards | ps_scatter
    assert set(times["ps_roi_align tiny ps"]) == forwards | reuse | ps_scatter
    assert all(ms > 0 for t in times.values() for ms in t.values())
    report = {"gpu": "x", "torch": "x", "triton": "x", "tests": {"counts": {}}, "bench": {},
              "kernel_configs": times}  # fmt: skip
    table = gpu_report.summary(report)
    assert "roi_align tiny: forward 64/2 / best" in table
    assert "roi_align tiny NHWC: nhwc forward 4/1 / best" in table
    assert "roi_pool tiny: scatter 4x2/1 / best" in table
    assert "roi_pool tiny: forward 2x2 64/2 / best" in table
    assert "ps_roi_pool tiny ps: scatter 64/2 / best" in table
    assert "roi_align tiny: forward, rois inner 32/1 / best" in table
    assert "roi_align tiny: forward reuse 64/2 / best" in table
    assert "roi_align tiny sr=0: forward wide 64/2 / best" in table


def test_reuse_loads_times_each_setting_beside_torchvision_and_puts_it_back(monkeypatch):
    # the op under each REUSE_LOADS setting, on an adaptive grid (roi_align's and
    # ps_roi_align's forward, the interpreter's on CPU), then the settings as they were
    import torch

    import roiops
    from roiops.gpu import roi_align as gpu_align

    gpu_report = load()
    plumbing_only(monkeypatch, gpu_report)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = [tiny_case("roi_align", sampling_ratio=0),
             tiny_case("ps_roi_align", "tiny ps", channels=12, sampling_ratio=0)]  # fmt: skip
    before = (gpu_align.REUSE_LOADS, gpu_align.REUSE_MIN_POINTS)
    seen = []
    real = gpu_align.roi_align_forward

    def recording(*args, **kwargs):
        seen.append(gpu_align.reuse_loads(args[5]))
        return real(*args, **kwargs)

    monkeypatch.setattr(gpu_align, "roi_align_forward", recording)
    with roiops.use_backend("triton"):
        times = gpu_report.reuse_loads(device, cases)
    assert (gpu_align.REUSE_LOADS, gpu_align.REUSE_MIN_POINTS) == before
    assert set(times) == {"roi_align tiny", "ps_roi_align tiny ps"}
    names = {"torchvision", *gpu_report.REUSE_SETTINGS}
    for t in times.values():
        assert set(t) == {"per_call", "back_to_back"}
        assert all(set(ms) == names and min(ms.values()) > 0 for ms in t.values())
    # every setting reached the launcher: off, "adaptive" and "wide" from 3, 5 and 8 points
    assert set(seen) == {(False, 0), (True, 0), (True, 3), (True, 5), (True, 8)}
    report = {"gpu": "x", "torch": "x", "triton": "x", "tests": {"counts": {}}, "bench": {},
              "reuse_loads": times}  # fmt: skip
    table = gpu_report.summary(report)
    assert "roi_align tiny fwd ms back to back: torchvision / off / adaptive / wide 3" in table


def test_program_order_times_every_order_and_puts_the_launchers_back(monkeypatch):
    # the Triton kernels (the interpreter's on CPU) in each order of PROGRAM_ORDERS
    import torch

    import roiops
    from roiops.gpu import tiles

    gpu_report = load()
    plumbing_only(monkeypatch, gpu_report)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # roi_align: the orders' channel blocks change its scatter's launch (roi_pool's, as
    # for every op, only its order)
    cases = [tiny_case("roi_align", rois=3)]
    before = (tiles.GATHER_ROIS_INNER, tiles.SCATTER_ROIS_INNER, tiles.BACKWARD_CHANNELS)
    with roiops.use_backend("triton"):
        rows = gpu_report.program_order(device, cases)
    assert (tiles.GATHER_ROIS_INNER, tiles.SCATTER_ROIS_INNER, tiles.BACKWARD_CHANNELS) == before
    assert [(r["op"], r["direction"]) for r in rows] == [
        ("roi_align", "forward"),
        ("roi_align", "backward"),
    ]
    names = {"torchvision", "roiops", *gpu_report.PROGRAM_ORDERS}
    assert all(set(r["ms"]) == names and min(r["ms"].values()) > 0 for r in rows)
    report = {"gpu": "x", "torch": "x", "triton": "x", "tests": {"counts": {}}, "bench": {},
              "program_order": rows}  # fmt: skip
    table = gpu_report.summary(report)
    row = "float32 backward, rois inner, 256 channels: vs torchvision / vs launchers' order"
    assert row in table


def test_forward_layouts_times_both_kernels_of_each_op(monkeypatch):
    import numpy as np
    import torch

    gpu_report = load()
    plumbing_only(monkeypatch, gpu_report)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = (("tiny", (1, 3, 10, 12), 4, (8, 30), 0.25),)
    times = gpu_report.forward_layouts(np.random.default_rng(0), device, cases, pooled=2)
    assert set(times) == {"roi_align tiny", "roi_pool tiny", "roi_pool training tiny"}
    assert all(set(t) == {"nchw_ms", "copy_then_nhwc_ms"} for t in times.values())
    assert all(ms > 0 for t in times.values() for ms in t.values())


def test_backward_passes_times_every_pass_on_a_small_case(monkeypatch):
    # the kernels run compiled on a GPU, through Triton's interpreter elsewhere
    import torch

    from roiops.gpu import fixed_point
    from roiops.gpu import ps_roi_pool as gpu_ps_pool
    from roiops.gpu import roi_align as gpu_align
    from roiops.gpu import roi_pool as gpu_pool

    gpu_report = load()
    plumbing_only(monkeypatch, gpu_report)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cases = [
        tiny_case("roi_pool"),
        tiny_case("roi_align", "tiny sr=0", sampling_ratio=0),
        tiny_case("ps_roi_pool", "tiny ps", channels=12),
        tiny_case("ps_roi_align", "tiny ps", channels=12),
    ]  # fmt: skip
    times = gpu_report.backward_passes(device, cases)
    assert set(times) == {"roi_pool tiny", "roi_align tiny sr=0", "ps_roi_pool tiny ps",
                          "ps_roi_align tiny ps"}  # fmt: skip
    passes = {"zero_and_bound", "zeros_then_vector_norm", "scatter", "convert",
              "torchvision_backward", "roiops_backward", "roiops_backward_other_bound"}  # fmt: skip
    bands = {f"{name}_band_{b}" for name in ("scatter", "convert", "roiops_backward")
             for b in (1, 8, 16)}  # fmt: skip
    per_bin = {"scatter_per_bin", "roiops_backward_per_bin"}
    regions = {"regions", "zero_regions_and_bound", "scatter_regions", "convert_regions"}
    in_regions = regions | {"roiops_backward_regions"}
    each = {"scatter_each", "roiops_backward_each"}
    extras = {"ps_roi_pool": bands, "ps_roi_align": per_bin, "roi_pool": in_regions | each,
              "roi_align": in_regions}  # fmt: skip
    for case, t in times.items():
        op = case.split()[0]
        timed = passes | extras.get(op, set())
        again = timed & set(gpu_report.BACK_TO_BACK_PASSES)
        back_to_back = {f"{name} back to back" for name in again}
        chosen = {"regions_chosen"} if op in ("roi_pool", "roi_align") else set()
        assert set(t) == timed | back_to_back | chosen | {"torch_bound"}
        assert all(t[name] > 0 for name in timed | back_to_back)
        assert t["torch_bound"] is False  # (tiny gradients: max |grad| in pieces)
    # the tiny cases' RoIs reach most of their map: the whole map is zeroed
    assert times["roi_pool tiny"]["regions_chosen"] is False
    assert times["roi_align tiny sr=0"]["regions_chosen"] is False
    # put back after the timing
    assert gpu_align.PS_LANES and gpu_ps_pool.BAND == 0
    assert not gpu_pool.REGIONS and not gpu_align.REGIONS and gpu_pool.RUNS
    assert fixed_point.TORCH_BOUND_GRADIENTS == 1 << 22
    report = {"gpu": "x", "torch": "x", "triton": "x", "tests": {"counts": {}}, "bench": {},
              "backward_passes": times}  # fmt: skip
    table = gpu_report.summary(report)
    assert "roi_pool tiny bwd ms: zero and max|g| + scatter + convert / op / tv" in table
    assert "roi_pool tiny bwd ms, zero and max|g|: one launch / torch.zeros + vector_norm" in table
    assert "ps_roi_pool tiny ps bwd ms, sums in bands of 1 rows: scatter + convert / op" in table
    assert "ps_roi_align tiny ps bwd ms, a program per bin: scatter / op" in table
    assert "ps_roi_pool tiny ps bwd ms, sums in bands of 8 rows: scatter + convert / op" in table
    assert "roi_pool tiny bwd GPU ms (back to back): zero and max|g| + scatter + convert" in table
    assert ("roi_pool tiny bwd ms, sums in regions (not chosen): regions + zero + scatter + "
            "convert / op") in table  # fmt: skip
    assert "roi_pool tiny bwd GPU ms (back to back), sums in regions" in table
    assert "roi_pool tiny bwd ms, an atomic a bin (no runs): scatter (back to back) / op" in table
    assert "roi_pool tiny bwd ms, the op with zero and max|g| by one launch / torch's two" in table


def test_parts_choose_what_a_run_measures(tmp_path, monkeypatch):
    gpu_report = load()
    measured = []
    monkeypatch.setattr(gpu_report.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_report.torch.cuda, "get_device_name", lambda: "a GPU")
    results = {
        "launch_check_in_a_process": {"ok": True, "differ": [], "error": None,
                                      "switched_off": False},
        "run_tests": {"counts": {"passed": 1}, "ok": True},
        "bench_rows": [],
        "latency": {"roiops_us": 30.0, "torchvision_us": 20.0},
        "deterministic_mode": {"roiops_ms": 1.0, "torchvision_deterministic_ms": 25.0,
                               "distinct_gradients_of_5": {"roiops": 1, "torchvision": 5}},
        "program_order": [],
        "forward_layouts": {},
        "backward_passes": {},
        "kernel_configs": {},
        "reuse_loads": {},
        "side_benchmark": [{"case": "b", "direction": "forward", "mmcv": 2.0, "roiops": 1.0}],
    }  # fmt: skip
    for name, result in results.items():
        monkeypatch.setattr(
            gpu_report, name, lambda *args, name=name, r=result: measured.append(name) or r
        )
    warmed = []
    monkeypatch.setattr(gpu_report, "warm_up", lambda parts, quick: warmed.append(parts) or ["w"])
    monkeypatch.setattr(gpu_report, "finish_warm_up", lambda runs, timeout_s: {"workers": 1})
    path = tmp_path / "cuda.json"
    gpu_report.main(["--parts", "float16", "backward_passes", "--json", str(path)])
    # the launch check first, in every run
    assert measured == ["launch_check_in_a_process", "bench_rows", "backward_passes"]
    assert warmed == [["float16", "backward_passes"]]
    assert set(json.loads(path.read_text())) >= {"bench", "backward_passes"}
    report = json.loads(path.read_text())
    assert set(report["seconds"]) == {"launch_check", "warm_up", "float16", "backward_passes"}
    table = gpu_report.summary(report)
    assert "of which compiling in the timed parts (kernels), s" in table and " 0 (0)" in table
    assert "warm-up (beside the tests), waited for, s" in table
    assert report["parts"] == ["float16", "backward_passes"]
    measured.clear()
    # make gpu's default: the checks of issue 9, not the tuning measurements
    gpu_report.main(["--json", str(path)])
    assert measured == ["launch_check_in_a_process", "run_tests", "bench_rows", "bench_rows",
                        "bench_rows", "latency", "deterministic_mode"]  # fmt: skip
    table = gpu_report.summary(json.loads(path.read_text()))
    assert "this run's time after its imports, s" in table and "<= 480 s" in table
    measured.clear()
    gpu_report.main(["--parts", "tuning"])
    assert measured == ["launch_check_in_a_process", "program_order", "forward_layouts",
                        "backward_passes", "kernel_configs", "reuse_loads"]  # fmt: skip
    measured.clear()
    gpu_report.main(["--parts", "all", "--skip-tests"])
    assert "run_tests" not in measured and len(measured) == 11 + 5
    measured.clear()
    # the side benchmarks: a section each, their rows in the table
    gpu_report.main(["--parts", "side", "--json", str(path)])
    assert measured == ["launch_check_in_a_process"] + ["side_benchmark"] * 5
    report = json.loads(path.read_text())
    assert set(report["side"]) == set(gpu_report.SIDE_BENCHMARKS)
    assert "deform_ps_roi_pool b forward, ms: mmcv / roiops" in gpu_report.summary(report)
    assert "2.00 / 1.00" in gpu_report.summary(report)
    warmed.clear()
    gpu_report.main(["--parts", "float32", "--no-warm-up", "--json", str(path)])
    assert not warmed and "warm_up" not in json.loads(path.read_text())["seconds"]


def test_a_warm_up_worker_runs_only_the_parts_it_warms_and_writes_nothing(monkeypatch, tmp_path):
    gpu_report = load()
    measured = []
    monkeypatch.setattr(gpu_report.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_report.torch.cuda, "get_device_name", lambda: "a GPU")
    monkeypatch.setattr(gpu_report.bench, "time_interleaved", gpu_report.bench.time_interleaved)
    for name in ("run_tests", "bench_rows", "latency", "kernel_configs", "warm_up"):
        monkeypatch.setattr(gpu_report, name, lambda *a, name=name: measured.append(name) or {})
    path = tmp_path / "cuda.json"
    argv = ["--parts", "tests", "float32", "latency", "kernel_configs", "--json", str(path)]
    assert gpu_report.main([*argv, "--warm-shard", "1/3"]) == 0
    assert measured == ["bench_rows", "kernel_configs"]  # no tests, no latency, no warm-up
    assert not path.exists()
    assert gpu_report.bench.time_interleaved.__name__ == "call_share"


def test_warm_up_workers_call_every_timed_function_once_between_them(monkeypatch):
    gpu_report = load()
    bench = gpu_report.bench
    calls = []
    parts = [{f"{part} {i}": (lambda key=(part, i): calls.append(key)) for i in range(n)}
             for part, n in (("a", 4), ("b", 1), ("c", 6))]  # fmt: skip
    monkeypatch.setattr(bench, "time_interleaved", bench.time_interleaved)  # (put back)
    for shard in range(3):
        gpu_report.sharded_calls(shard, 3)
        for fns in parts:  # the same parts in the same order in every worker
            times = bench.time_interleaved(fns, "cpu", 5)
            assert list(times) == list(fns) and all(t != t for t in times.values())  # NaN
    assert sorted(calls) == [(part, i) for part, n in (("a", 4), ("b", 1), ("c", 6))
                             for i in range(n)]  # fmt: skip


def test_warm_up_starts_a_worker_a_shard_on_the_parts_it_can_warm(monkeypatch):
    gpu_report = load()
    started = []
    monkeypatch.setattr(
        gpu_report.subprocess, "Popen", lambda command, **_: started.append(command)
    )
    monkeypatch.setattr(gpu_report, "WARM_WORKERS", 3)
    runs = gpu_report.warm_up(["tests", "float32", "latency", "kernel_configs"], quick=True)
    assert len(runs) == 3
    for i, command in enumerate(started):
        assert command[1].endswith("gpu_report.py") and "--quick" in command
        assert command[command.index("--parts") + 1 :][:2] == ["float32", "kernel_configs"]
        assert command[-2:] == ["--warm-shard", f"{i}/3"]
    assert gpu_report.warm_up(["tests", "latency", "deterministic"], quick=False) == []


def test_warm_up_waits_for_its_workers_and_keeps_a_failed_one_s_last_lines():
    gpu_report = load()
    code = "import sys, time; print('compiling'); time.sleep({}); sys.exit({})"
    runs = []
    for sleep, rc in ((0, 0), (0, 3), (60, 0)):
        log = tempfile.TemporaryFile("w+")
        run = subprocess.Popen([sys.executable, "-c", code.format(sleep, rc)], stdout=log,
                               stderr=log)  # fmt: skip
        runs.append((run, log))
    started = time.perf_counter()
    result = gpu_report.finish_warm_up(runs, timeout_s=5)
    assert time.perf_counter() - started < 30  # the sleeper is stopped
    assert result["workers"] == 3 and result["returncodes"][:2] == [0, 3]
    assert result["returncodes"][2] != 0 and len(result["errors"]) == 2
    assert "compiling" in result["errors"][0]


def test_launch_alone_fires_the_kept_launch_as_it_does_and_as_triton_would(monkeypatch):
    # `latency`'s A/B of a direct launch: the same compiled kernel, given the tensors'
    # addresses and no hooks, or the tensors, the launch metadata and Triton's hook chains
    # (its kernels compiled, not interpreted, and compiled into stand-ins that record)
    import inspect

    import torch
    import triton
    from triton.runtime.jit import JITFunction

    from roiops.gpu import launch, tiles
    from roiops.gpu import roi_align as gpu_align

    gpu_report = load()
    fake = load_benchmark("launch_overhead")
    if not launch.fast_launch_supported():
        pytest.skip("Triton's launch convention not mirrored")
    interpreted = gpu_align.roi_align_forward_kernel.jit
    unspecialised = [n for n in inspect.signature(interpreted.fn).parameters
                     if n in tiles.UNSPECIALISED]  # fmt: skip
    compiled = launch.Kernel(JITFunction(interpreted.fn, do_not_specialize=unspecialised))
    monkeypatch.setattr(gpu_align, "roi_align_forward_kernel", compiled)
    tiles.clear_caches()
    x = torch.randn(2, 8, 10, 12)
    rois = torch.tensor([[0, 1.0, 1.0, 30.0, 20.0], [1, 2.0, 3.0, 9.0, 9.0]])
    metadata = object()
    monkeypatch.setattr(fake.FakeCompiled, "launch_metadata", lambda *a: metadata)
    try:
        with fake.fake_gpu():
            fns = gpu_report.launch_alone(x, rois)
            assert set(fns) == {"launch", "fire", "fire_as_triton"}
            stand_in = next(iter(compiled.table.values()))[0]
            fns["launch"]()
            direct = stand_in.launches[-1]
            fns["fire"]()
            fired = stand_in.launches[-1]
            fns["fire_as_triton"]()
            as_triton = stand_in.launches[-1]
    finally:
        tiles.clear_caches()
    runtime = triton.knobs.runtime
    assert fired == direct
    assert direct[:6] == as_triton[:6]  # grid, stream, function, packed metadata
    assert direct[6:9] == (None, None, None)
    assert as_triton[6:9] == (metadata, runtime.launch_enter_hook, runtime.launch_exit_hook)
    tensors, values = as_triton[9:13], as_triton[13:]
    assert tensors[:2] == (x, rois) and tensors[2] is tensors[3]
    assert direct[9:13] == tuple(t.data_ptr() for t in tensors) and direct[13:] == values


def test_launch_check_passes_where_both_paths_agree_and_leaves_the_switch(monkeypatch):
    gpu_report = load()
    monkeypatch.delenv("ROIOPS_FAST_LAUNCH", raising=False)
    # the calls it makes on a GPU, here on CPU (the Numba backend: no launches to compare)
    check = gpu_report.launch_check("cpu")
    assert check == {"ok": True, "differ": [], "error": None, "switched_off": False}
    assert "ROIOPS_FAST_LAUNCH" not in gpu_report.os.environ


def test_launch_check_turns_direct_launches_off_where_they_differ_or_raise(monkeypatch):
    gpu_report = load()
    env = gpu_report.os.environ
    one = gpu_report.torch.ones(3)

    def path():  # what each call gives: Triton's path or a direct launch
        return "triton" if env.get("ROIOPS_FAST_LAUNCH") == "0" else "direct"

    monkeypatch.setenv("ROIOPS_FAST_LAUNCH", "1")
    check = gpu_report.launch_check(calls={"same": lambda: (one,), "differs": lambda: (
        one if path() == "triton" else one + 1,)})  # fmt: skip
    assert not check["ok"] and check["error"] is None and not check["switched_off"]
    assert check["differ"] == ["differs, call 1", "differs, call 2", "differs, call 3"]
    assert env["ROIOPS_FAST_LAUNCH"] == "0"  # the rest of the run: Triton's path

    def raises():
        if path() == "direct":
            raise RuntimeError("a direct launch failed")
        return (one,)

    monkeypatch.delenv("ROIOPS_FAST_LAUNCH")
    check = gpu_report.launch_check(calls={"raises": raises})
    assert not check["ok"] and "a direct launch failed" in check["error"]
    assert env["ROIOPS_FAST_LAUNCH"] == "0"
    monkeypatch.setenv("ROIOPS_FAST_LAUNCH", "0")
    check = gpu_report.launch_check(calls={"raises": raises})
    assert check["ok"] and check["switched_off"]


def test_launch_check_runs_in_a_process_of_its_own_whose_failure_turns_them_off(monkeypatch):
    gpu_report = load()
    env = gpu_report.os.environ
    # the checks below set the variable; monkeypatch puts back what it saw, and records
    # nothing for a delenv of a variable that is not set: without the setenv first, the
    # variable stayed "0" after this test, and Kernel's direct launches off in the tests
    # that ran after it in the same process (tests/test_launch.py failed under xdist)
    monkeypatch.setenv("ROIOPS_FAST_LAUNCH", "1")
    monkeypatch.delenv("ROIOPS_FAST_LAUNCH")
    # the real process, on CPU: its verdict comes back as its last line
    assert gpu_report.launch_check_in_a_process("cpu")["ok"]
    assert "ROIOPS_FAST_LAUNCH" not in env
    # a process that dies (say of a CUDA error that a wrong launch left behind)
    crash = [sys.executable, "-c", "import sys; print('CUDA error', file=sys.stderr); sys.exit(3)"]
    monkeypatch.setattr(gpu_report, "launch_check_command", lambda device: crash)
    check = gpu_report.launch_check_in_a_process("cpu")
    assert not check["ok"] and "exit status 3" in check["error"] and "CUDA error" in check["error"]
    assert env["ROIOPS_FAST_LAUNCH"] == "0"
    # a process whose launches differ: its verdict, as it printed it
    verdict = {"ok": False, "differ": ["roi_pool, call 2"], "error": None, "switched_off": False}
    says = [sys.executable, "-c", f"print({json.dumps(json.dumps(verdict))})"]
    monkeypatch.setattr(gpu_report, "launch_check_command", lambda device: says)
    monkeypatch.delenv("ROIOPS_FAST_LAUNCH")
    assert gpu_report.launch_check_in_a_process("cpu") == verdict
    assert env["ROIOPS_FAST_LAUNCH"] == "0"
