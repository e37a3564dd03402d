"""The command line: explain's numbers come from the library, bench produces a table."""

import json
from pathlib import Path

import pytest

from roiops import bench, cli, explain, figures

ROOT = Path(__file__).resolve().parents[1]


def test_explain_reproduces_the_article(capsys, tmp_path):
    assert cli.main(["explain", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "800 / 32 = 25 cells; box: 665 / 32 = 20.78 cells" in text
    assert "box 20.78 -> 20 cells" in text
    assert "bin 20 / 7 = 2.86 -> 2 cells" in text
    assert "0.1 cell = 3.2 px and 0.8 cell = 25.6 px" in text
    assert "[0,4) [3,7) [6,10) [9,13) [12,16) [15,19) [18,22)" in text
    assert "sampling_ratio=2: 2x2 = 4 points per bin; bin 0 samples x at 0.74, 2.23" in text
    assert "3x3 = 9 points per bin" in text
    assert "Checked:" in text
    figures = sorted(tmp_path.glob("*.png"))
    assert [f.name for f in figures] == [
        "1-roipool-quantization.png",
        "2-roialign-sampling.png",
        "3-backward-routing.png",
    ]
    for f in figures:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 10_000


def test_backward_figure_data_comes_from_the_ops():
    pool_grad, align_grad = figures.gradient_maps(explain.Example())
    # RoIPool: one argmax cell takes the whole unit gradient
    assert (pool_grad != 0).sum() == 1 and pool_grad.sum() == 1.0
    # RoIAlign: 4 points x 4 bilinear neighbours, weights summing to one
    assert 4 <= (align_grad != 0).sum() <= 16 and abs(align_grad.sum() - 1.0) < 1e-12


def test_explain_follows_its_options(capsys):
    args = ["explain", "--image-size", "1024", "--box-size", "300", "--stride", "16"]
    assert cli.main([*args, "--output-size", "5", "--sampling-ratio", "1", "--out", ""]) == 0
    text = capsys.readouterr().out
    assert "1024 / 16 = 64 cells; box: 300 / 16 = 18.75 cells" in text
    assert "box 18.75 -> 18 cells" in text
    assert "bin 18 / 5 = 3.60 -> 3 cells" in text
    assert "sampling_ratio=1: 1x1 = 1 points per bin" in text


def test_bench_quick_table_and_json(tmp_path, capsys, monkeypatch):
    # one repetition of the quick cases: checks the plumbing, not the speed; a peak
    # bandwidth by hand takes the GPU's bandwidth column through its paces on CPU
    monkeypatch.setenv("ROIOPS_PEAK_GBPS", "100")
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--repeat", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "geometric mean speed-up, forward" in text
    assert "geometric mean speed-up, backward" in text
    assert "of peak BW" in text
    data = json.loads(out.read_text())
    assert len(data["rows"]) == sum(len(bench.directions(c)) for c in bench.cases(quick=True))
    assert {r["direction"] for r in data["rows"]} == {"forward", "backward", "inference"}
    for row in data["rows"]:
        assert row["torchvision_ms"] > 0 and row["roiops_ms"] > 0
        assert row["speedup"] == pytest.approx(row["torchvision_ms"] / row["roiops_ms"])
        assert row["roiops_bandwidth"] > 0


def test_bench_calls_must_be_positive():
    with pytest.raises(SystemExit, match="--calls must be at least 1, got 0"):
        cli.main(["bench", "--quick", "--calls", "0"])


def test_bench_inputs_are_valid_boxes():
    for case in bench.cases():
        if case.levels > 1:
            continue  # pyramids: test_gpu_cases_and_fpn_levels
        (level,) = bench.make_inputs(case, "cpu", bench.torch.float32)
        n, c, h, w = case.shape
        assert level.x.shape == case.shape and level.rois.shape == (case.num_rois, 5)
        sides = level.rois[:, 3:] - level.rois[:, 1:3]
        assert float(sides.min()) >= case.box_px[0] and float(sides.max()) <= case.box_px[1]
        # position-sensitive ops: one output channel per output_size**2 input channels
        out_c = c // case.output_size**2 if case.op.startswith("ps_") else c
        assert level.grad.shape == (case.num_rois, out_c, case.output_size, case.output_size)


def test_gpu_cases_and_fpn_levels():
    names = [c.name for c in bench.cases(device="cuda")]
    assert "fpn 8x512" in names and "a large sr=0" in names
    # the level mapper: 224 px boxes go to P4 (index 2), tiny ones to P2, huge ones to P5
    boxes = bench.np.array([[0, 0, 224, 224], [0, 0, 16, 16], [0, 0, 2000, 2000.0]])
    assert bench.fpn_level(boxes, 4).tolist() == [2, 0, 3]
    small_fpn = bench.Case("fpn", "roi_align", (2, 4, 32, 32), 64, (16, 400), 1 / 4, levels=4)
    levels = bench.make_inputs(small_fpn, "cpu", bench.torch.float16)
    assert [lv.x.shape[-1] for lv in levels] == [32, 16, 8, 4]
    assert sum(lv.rois.shape[0] for lv in levels) == 64
    assert all(lv.rois.dtype == bench.torch.float32 for lv in levels)
    assert all(lv.tv_rois.dtype == bench.torch.float16 for lv in levels)


def test_bench_callables_compare_like_for_like_over_pyramid_levels():
    # the GPU table's FPN case, small and on CPU: every level runs, and both libraries
    # compute the same numbers, forward and backward
    small_fpn = bench.Case("fpn", "roi_align", (2, 4, 32, 32), 64, (16, 400), 1 / 4, levels=4)
    levels = bench.make_inputs(small_fpn, "cpu", bench.torch.float32)
    fns = bench._callables(small_fpn, levels)
    for direction in bench.directions(small_fpn):
        ours = fns[("roiops", direction)]()
        theirs = fns[("torchvision", direction)]()
        assert len(ours) == len(theirs) == 4
        for a, b in zip(ours, theirs, strict=True):
            bench.torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bench_fpn_module_callables_run_and_agree():
    # the FPN pooler module case, small: both modules run forward and train, and give
    # the same forward numbers
    case = bench.Case("fpn", "multi_scale_roi_align", (2, 4, 32, 32), 64, (16, 400), 1 / 4,
                      levels=4)  # fmt: skip
    fns = bench._module_callables(case, bench.make_inputs(case, "cpu", bench.torch.float32))
    assert bench.directions(case) == ("forward", "train")
    assert bench.torch.equal(fns[("roiops", "forward")](), fns[("torchvision", "forward")]())
    for lib in ("roiops", "torchvision"):
        fns[(lib, "train")]()


def test_bench_mmdet_extractor_callables_run_and_agree():
    # mmdet's extractor case, small: mmdet's loop over the levels with torchvision's
    # roi_align and roiops' SingleRoIExtractor run forward and train, the same numbers
    case = bench.Case("mmdet", "single_roi_extractor", (2, 4, 32, 32), 64, (16, 400), 1 / 4,
                      sampling_ratio=0, levels=4)  # fmt: skip
    fns = bench.callables(case, bench.make_inputs(case, "cpu", bench.torch.float32))
    assert bench.directions(case) == ("forward", "train")
    assert bench.torch.equal(fns[("roiops", "forward")](), fns[("torchvision", "forward")]())
    for lib in ("roiops", "torchvision"):
        fns[(lib, "train")]()


def test_side_benchmark_times_each_case_and_writes_json(tmp_path, capsys, monkeypatch):
    # the benchmarks/ scripts' runner: every case's libraries, forward and train, a
    # table with the ratio asked for, the rows as JSON
    monkeypatch.setattr(bench, "MIN_TIMED_S", 0.0)
    seen = []

    def calls(size, device):
        seen.append((size, device))
        x = bench.torch.zeros(size)
        return {(lib, d): (lambda: x + 1) for lib in ("slow", "fast") for d in ("forward", "train")}

    out = tmp_path / "side.json"
    rows = bench.side_benchmark("d", "two libraries", {"cpu": [("tiny", 3), ("small", 5)]},
                                calls, ("slow", "fast"), ("slow", "fast"),
                                ["--repeat", "2", "--json", str(out)])  # fmt: skip
    assert seen == [(3, "cpu"), (5, "cpu")]
    cases = [(r["case"], r["direction"]) for r in rows]
    assert cases == [(c, d) for c in ("tiny", "small") for d in ("forward", "train")]
    printed = capsys.readouterr().out
    assert printed.startswith("two libraries on cpu, ms") and printed.count("x\n") == 4
    assert json.loads(out.read_text())["rows"] == rows


def test_side_benchmarks_run_on_small_cases(monkeypatch, capsys):
    # the side scripts in benchmarks/, each on one small case
    import importlib.util

    monkeypatch.setattr(bench, "MIN_TIMED_S", 0.0)
    small = ((2, 8, 20, 24), 6, (16, 80), 1 / 4)
    cases = {
        "simple_roi_align": [("small", "simple", *small), ("small", "points", *small)],
        "riroi_align_rotated": [("small", *small, 2)],  # (a sampling ratio)
        "deform_roi_pool": [("small", *small, 2)],
        "deform_ps_roi_pool": [("small", *small, 1), ("small", (2, 4 * 49, 20, 24), *small[1:], 7)],
        "crop_and_resize": [("small", (2, 8, 20, 24), 6, 3)],
    }
    for name, case_list in cases.items():
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(module, "CASES", {"cpu": case_list})
        module.main(["--repeat", "1"])
        assert capsys.readouterr().out.count("small ") == 2 * len(case_list)


def test_bench_timing_alternates_the_libraries(monkeypatch):
    # a warm-up call each, then rounds in which each library is called once in turn, so
    # a slow phase of a shared machine lands on both sides of a ratio; short calls get
    # more rounds (up to 100) until they add up to MIN_TIMED_S
    calls = []
    fns = {"torchvision": lambda: calls.append("tv"), "roiops": lambda: calls.append("ro")}
    monkeypatch.setattr(bench, "MIN_TIMED_S", 0.0)
    medians = bench.time_interleaved(fns, "cpu", 3)
    assert calls == ["tv", "ro"] * 4
    calls.clear()
    monkeypatch.setattr(bench, "MIN_TIMED_S", 60.0)
    bench.time_interleaved(fns, "cpu", 3)
    assert calls == ["tv", "ro"] * 101
    assert set(medians) == {"torchvision", "roiops"}
    assert all(ms >= 0 for ms in medians.values())


def test_bench_back_to_back_samples_time_several_calls_each(monkeypatch):
    # calls > 1: a sample is that many calls of one library and one synchronisation,
    # reported per call
    calls = []
    fns = {"torchvision": lambda: calls.append("tv"), "roiops": lambda: calls.append("ro")}
    monkeypatch.setattr(bench, "MIN_TIMED_S", 0.0)
    slept = []
    monkeypatch.setattr(bench, "_sync", lambda device: slept.append(bench.time.sleep(0.01)))
    medians = bench.time_interleaved(fns, "cpu", 2, calls=4)
    assert calls == ["tv", "ro"] + (["tv"] * 4 + ["ro"] * 4) * 2
    assert len(slept) == 2 + 2 * 2  # one synchronisation a sample
    # a 10 ms synchronisation per sample of 4 calls: 2.5 ms a call, not 10
    assert all(2.4 < ms < 5 for ms in medians.values())
