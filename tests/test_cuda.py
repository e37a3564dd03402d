"""The Triton kernels compiled on a CUDA GPU: against torchvision's CUDA kernels, no host
synchronisation, CUDA graph capture, determinism, bad values. Skipped without CUDA.

Compiled Triton contracts ``a * b + c`` into FMA (so does nvcc for torchvision), so
roi_align is compared with tolerances; roi_pool's forward and argmax compare bit for bit
(its arithmetic has no contraction and divides in IEEE).
"""

import hashlib

import numpy as np
import pytest
import torch
from conftest import random_rois

import roiops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
tv_ops = pytest.importorskip("torchvision.ops")


def cuda(a, dtype=torch.float32):
    return torch.as_tensor(np.asarray(a), dtype=dtype).cuda()


def detection_rois(rng, batch_size, count, image_h, image_w, integer=False):
    """Boxes of 4 to 200 px inside the image, some with whole-pixel corners."""
    sides = rng.uniform(4, 200, (count, 2))
    x1 = rng.uniform(0, np.maximum(image_w - sides[:, 0], 1))
    y1 = rng.uniform(0, np.maximum(image_h - sides[:, 1], 1))
    boxes = np.stack([x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], axis=1)
    if integer:
        boxes = np.round(boxes)
    batch = rng.integers(0, batch_size, count)
    return np.concatenate([batch[:, None], boxes], axis=1)


def whole_cell_rois(output_size, scale):
    """Integer boxes whose feature-map sides are 1-4 times the bin count (roi_align) or
    that times minus one (roi_pool counts the end cell)."""
    rows = []
    for m in range(1, 5):
        for side in (m * output_size, m * output_size - 1):
            for x in (0, 3, 10):
                rows.append(
                    [x % 2, x / scale, 2 * x / scale, (x + side) / scale, (2 * x + side) / scale]
                )
    return np.array(rows)


@pytest.fixture
def rng():
    return np.random.default_rng(2026)


@pytest.mark.parametrize("output_size", [7, 14])
@pytest.mark.parametrize("integer", [False, True])
def test_roi_pool_equals_torchvision_bitwise(rng, output_size, integer):
    x = torch.randn(2, 16, 50, 68, device="cuda")
    rois = np.concatenate(
        [detection_rois(rng, 2, 300, 200, 272, integer), whole_cell_rois(output_size, 0.25)]
    )
    rois = cuda(rois)
    out = roiops.roi_pool(x, rois, output_size, 0.25)
    expected = tv_ops.roi_pool(x, rois, output_size, 0.25)
    assert torch.equal(out, expected)
    # the input gradient: where each cell is the argmax of one output (random inputs make
    # maxima unique) sums of a few values, equal up to the order of float additions
    xr = x.clone().requires_grad_()
    xt = x.clone().requires_grad_()
    grad = torch.randn_like(out)
    roiops.roi_pool(xr, rois, output_size, 0.25).backward(grad)
    tv_ops.roi_pool(xt, rois, output_size, 0.25).backward(grad)
    torch.testing.assert_close(xr.grad, xt.grad, rtol=1e-5, atol=1e-5)
    # and the CPU kernels' gradient within float rounding: the scatter sums in fixed
    # point (exactly) and rounds once, the CPU kernels round at each addition
    xc = x.cpu().requires_grad_()
    roiops.roi_pool(xc, rois.cpu(), output_size, 0.25).backward(grad.cpu())
    torch.testing.assert_close(xr.grad.cpu(), xc.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("ratio", [-1, 0, 2, 3])
@pytest.mark.parametrize("output_size", [(7, 7), (5, 3), (14, 14)])
def test_roi_align_matches_torchvision(rng, aligned, ratio, output_size):
    x = torch.randn(2, 16, 50, 68, device="cuda")
    rois = np.concatenate(
        [detection_rois(rng, 2, 300, 200, 272, True), whole_cell_rois(output_size[0], 0.25)]
    )
    rois = cuda(rois)
    xr = x.clone().requires_grad_()
    xt = x.clone().requires_grad_()
    out = roiops.roi_align(xr, rois, output_size, 0.25, ratio, aligned)
    expected = tv_ops.roi_align(xt, rois, output_size, 0.25, ratio, aligned)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(xr.grad, xt.grad, rtol=1e-5, atol=1e-5)


def test_adaptive_grid_of_whole_cell_boxes_is_torchvision_s(rng):
    # sides that are exact multiples of the bin count: an approximate division gives
    # ceil(size / bins) one more sample per axis, which changes the mean visibly
    x = torch.randn(2, 8, 64, 64, device="cuda")
    rois = cuda(whole_cell_rois(7, 1.0))
    out = roiops.roi_align(x, rois, 7, 1.0, 0, True)
    expected = tv_ops.roi_align(x, rois, 7, 1.0, 0, True)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_channels_last_input_matches_torchvision(rng, op):
    # read NHWC as it lies (torchvision copies it to NCHW first)
    x = torch.randn(2, 64, 50, 68, device="cuda").contiguous(memory_format=torch.channels_last)
    rois = cuda(detection_rois(rng, 2, 300, 200, 272, True))
    if op == "roi_pool":
        assert torch.equal(roiops.roi_pool(x, rois, 7, 0.25), tv_ops.roi_pool(x, rois, 7, 0.25))
    else:
        for mode_args in ((0, True), (2, False)):
            torch.testing.assert_close(
                roiops.roi_align(x, rois, 7, 0.25, *mode_args),
                tv_ops.roi_align(x, rois, 7, 0.25, *mode_args),
                rtol=1e-5,
                atol=1e-5,
            )


@pytest.mark.parametrize("ratio", [0, 2])
def test_ps_roi_align_matches_torchvision(rng, ratio):
    x = torch.randn(2, 4 * 49, 50, 68, device="cuda")
    rois = cuda(detection_rois(rng, 2, 300, 200, 272, True))
    xr = x.clone().requires_grad_()
    xt = x.clone().requires_grad_()
    out = roiops.ps_roi_align(xr, rois, 7, 0.25, ratio)
    expected = tv_ops.ps_roi_align(xt, rois, 7, 0.25, ratio)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(xr.grad, xt.grad, rtol=1e-5, atol=1e-5)


def test_ps_roi_pool_equals_torchvision(rng):
    x = torch.randn(2, 4 * 49, 50, 68, device="cuda")
    rois = cuda(detection_rois(rng, 2, 300, 200, 272, True))
    assert torch.equal(roiops.ps_roi_pool(x, rois, 7, 0.25), tv_ops.ps_roi_pool(x, rois, 7, 0.25))
    # the backward: the CPU kernels' gradient within float rounding (fixed-point sums
    # rounded once against float additions in order)
    xr = x.clone().requires_grad_()
    xc = x.cpu().requires_grad_()
    grad = torch.randn(len(rois), 4, 7, 7, device="cuda")
    roiops.ps_roi_pool(xr, rois, 7, 0.25).backward(grad)
    roiops.ps_roi_pool(xc, rois.cpu(), 7, 0.25).backward(grad.cpu())
    torch.testing.assert_close(xr.grad.cpu(), xc.grad, rtol=1e-5, atol=1e-5)


def test_multi_scale_roi_align_module_matches_torchvision(rng):
    from collections import OrderedDict

    names = ["p2", "p3", "p4", "p5"]
    x = OrderedDict(
        (name, torch.randn(2, 64, 200 >> i, 272 >> i, device="cuda"))
        for i, name in enumerate(names)
    )
    rois = cuda(detection_rois(rng, 2, 1000, 800, 1088))
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    shapes = [(800, 1088), (800, 1088)]
    ours = roiops.MultiScaleRoIAlign(names, 7, 2)(x, boxes, shapes)
    theirs = tv_ops.MultiScaleRoIAlign(names, 7, 2)(x, boxes, shapes)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["RoIAlign", "RoIAlignRotated"])
def test_mmdet_extractor_against_mmdet_s_loop_and_the_cpu(rng, kind):
    # mmdet's SingleRoIExtractor (one launch, no nonzero) against mmdet's forward written
    # out (test_mmdet.mmdet_extract: a loop over the levels), and the
    # gradients against the CPU kernels'
    from test_mmdet import (
        MMDET_LAYERS,
        STRIDES,
        mmdet_extract,
        mmdet_rois,
        rotated_rois_over,
    )

    config, layer = MMDET_LAYERS[kind]
    feats = [torch.randn(2, 16, 200 >> i, 272 >> i, device="cuda") for i in range(4)]
    rotated = kind == "RoIAlignRotated"
    if rotated:
        rois = cuda(rotated_rois_over(rng, 2, 500, 1024))
        rois[:, 5] = torch.deg2rad(rois[:, 5])
    else:
        rois = cuda(mmdet_rois(rng, 2, 500))
    extractor = roiops.SingleRoIExtractor(config, 16, STRIDES)
    leaves = [f.clone().requires_grad_() for f in feats]
    out = extractor(leaves, rois, 1.2)
    torch.testing.assert_close(out, mmdet_extract(layer, feats, rois, rotated, 1.2),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    grad = torch.randn_like(out)
    out.backward(grad)
    cpu_leaves = [f.cpu().requires_grad_() for f in feats]
    extractor(cpu_leaves, rois.cpu(), 1.2).backward(grad.cpu())
    for g, c in zip(leaves, cpu_leaves, strict=True):
        torch.testing.assert_close(g.grad.cpu(), c.grad, rtol=1e-4, atol=1e-4)


def test_roi_align_rotated_against_reference_and_roi_align(rng):
    from test_roi_align_rotated import rotated_rois

    x = torch.randn(2, 8, 30, 34, device="cuda", dtype=torch.float64)
    rois = cuda(rotated_rois(rng, 2, 60, 120, 136), torch.float64)
    out = roiops.roi_align_rotated(x, rois, 7, 0.25, 2)
    with roiops.use_backend("reference"):
        ref = roiops.roi_align_rotated(x, rois, 7, 0.25, 2)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # angle 0: aligned roi_align of the corner box
    zero = rois.clone()
    zero[:, 5] = 0
    c = zero[:, 1:5]
    corners = torch.stack(
        [zero[:, 0], c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2, c[:, 0] + c[:, 2] / 2,
         c[:, 1] + c[:, 3] / 2], dim=1,
    )  # fmt: skip
    torch.testing.assert_close(
        roiops.roi_align_rotated(x, zero, 7, 0.25, 2),
        roiops.roi_align(x, corners, 7, 0.25, 2, True),
        rtol=1e-10,
        atol=1e-10,
    )


def run_all_ops(x, rois, grad7):
    """Forward and backward of every op and mode; returns the input gradients."""
    grads = []
    for call in (
        lambda t: roiops.roi_align(t, rois, 7, 0.25, 2, True),
        lambda t: roiops.roi_align(t, rois, 7, 0.25, 0, False, "max"),
        lambda t: roiops.roi_align(t, rois, 7, 0.25, 2, True, "onnx_max"),
        lambda t: roiops.roi_pool(t, rois, 7, 0.25),
    ):
        out = call(x)
        (g,) = torch.autograd.grad(out, x, grad7)
        grads.append(g)
    return grads


def test_no_host_synchronisation(rng):
    x = torch.randn(2, 16, 50, 68, device="cuda", requires_grad=True)
    rois = cuda(detection_rois(rng, 2, 64, 200, 272))
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]  # (built before the check)
    grad7 = torch.randn(64, 16, 7, 7, device="cuda")
    run_all_ops(x, rois, grad7)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_all_ops(x, rois, grad7)
        roiops.roi_align(x, boxes, 7, 0.25, 2, True)
        with torch.no_grad():
            roiops.roi_pool(x, rois, 7, 0.25)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def capture(step, warmups: int = 1):
    """``(graph, outputs)``: ``step()`` captured in a CUDA graph, after ``warmups`` calls
    on a side stream (compilation and the allocator's first blocks outside the capture,
    as torch's documentation does it)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


def test_sums_in_regions_choose_on_the_device(rng, monkeypatch):
    # roi_pool's and roi_align's backward with their sums in the RoIs' regions
    # (``REGIONS``, off by default) choose between them and the whole map on the device:
    # no host synchronisation, and a captured graph chooses again for the RoIs it
    # replays with; the same bits as the whole map's sums either way
    from roiops.gpu import fixed_point
    from roiops.gpu import roi_align as gpu_align
    from roiops.gpu import roi_pool as gpu_pool

    x = torch.randn(2, 16, 50, 68, device="cuda", requires_grad=True)
    grad7 = torch.randn(64, 16, 7, 7, device="cuda")
    large = detection_rois(rng, 2, 64, 200, 272)
    small = large.copy()
    small[:, 3:] = small[:, 1:3] + (small[:, 3:] - small[:, 1:3]) * 0.05  # 0.2-10 px
    large, small = cuda(large), cuda(small)
    rois = small.clone()

    def step():
        pooled = roiops.roi_pool(x, rois, 7, 0.25)
        aligned = roiops.roi_align(x, rois, 7, 0.25, 0, True)
        return [torch.autograd.grad(out, x, grad7)[0] for out in (pooled, aligned)]

    expected = {}
    for name, boxes in (("large", large), ("small", small)):
        rois.copy_(boxes)
        expected[name] = step()
    monkeypatch.setattr(gpu_pool, "REGIONS", True)
    monkeypatch.setattr(gpu_align, "REGIONS", True)
    for boxes, chosen in ((large, False), (small, True)):
        for regions in (
            gpu_pool.roi_pool_regions(boxes, x.shape, 0.25, 7, 7),
            gpu_align.roi_align_regions(boxes, x.shape, 0.25, 7, 7, 0, True),
        ):
            fixed_point.Accumulator(grad7, x.shape, regions=regions)
            assert regions.chosen() == chosen
    step()  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    got = {}
    try:
        for name, boxes in (("large", large), ("small", small)):
            rois.copy_(boxes)
            got[name] = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # (compared after: torch.equal on CUDA tensors synchronises)
    for name, grads in got.items():
        assert all(map(torch.equal, grads, expected[name]))
    graph, captured = capture(step)
    for name, boxes in (("large", large), ("small", small), ("large", large)):
        rois.copy_(boxes)
        graph.replay()
        torch.cuda.synchronize()
        assert all(map(torch.equal, captured, expected[name]))


def test_direct_launches_give_triton_s_results(rng, monkeypatch):
    # roiops.gpu.launch.Kernel launches the kernels Triton would, with the same arguments
    # (tests/test_launch.py, against stand-ins); here the real thing, on unaligned views
    from roiops.gpu import launch
    from roiops.gpu.roi_align import roi_align_forward_kernel

    if not launch.fast_launch_supported():
        pytest.skip("Triton's launch convention not mirrored: Triton's path only")
    base = torch.randn(2 * 16 * 50 * 68 + 1, device="cuda")
    maps = [base[:-1].view(2, 16, 50, 68), base[1:].view(2, 16, 50, 68)]  # (16 B aligned or not)
    rois = cuda(detection_rois(rng, 2, 64, 200, 272))
    grad7 = torch.randn(64, 16, 7, 7, device="cuda")
    results = {}
    for fast in ("1", "0", "1"):
        monkeypatch.setenv(launch.ENV_VAR, fast)
        for i, x in enumerate(maps):
            results.setdefault(i, []).append(run_all_ops(x.requires_grad_(), rois, grad7))
    assert roi_align_forward_kernel.table  # the first round launched directly
    for runs in results.values():
        for direct, triton_path in zip(runs[0] + runs[2], runs[1] * 2, strict=True):
            assert torch.equal(direct, triton_path)


def test_cuda_graph_capture_and_replay(rng):
    x = torch.randn(2, 16, 50, 68, device="cuda", requires_grad=True)
    rois = cuda(detection_rois(rng, 2, 64, 200, 272))
    grad7 = torch.randn(64, 16, 7, 7, device="cuda")
    graph, captured = capture(lambda: run_all_ops(x, rois, grad7), warmups=2)
    # new values in the same buffers
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
        rois.copy_(cuda(detection_rois(rng, 2, 64, 200, 272)))
        grad7.copy_(torch.randn_like(grad7))
    graph.replay()
    torch.cuda.synchronize()
    for got, expected in zip(captured, run_all_ops(x, rois, grad7), strict=True):
        assert torch.equal(got, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_another_gpu_than_the_current_one(rng):
    # Triton launches on the current device; the ops make it the tensors' own
    x = torch.randn(2, 16, 50, 68, device="cuda")
    rois = cuda(detection_rois(rng, 2, 64, 200, 272))
    grad7 = torch.randn(64, 16, 7, 7, device="cuda")
    expected = run_all_ops(x.clone().requires_grad_(), rois, grad7)
    with torch.no_grad():
        inference = roiops.roi_align(x, rois, 7, 0.25, 2, True)
    assert torch.cuda.current_device() == 0
    on_1 = [t.to("cuda:1") for t in (x, rois, grad7)]
    got = run_all_ops(on_1[0].requires_grad_(), *on_1[1:])
    with torch.no_grad():
        got_inference = roiops.roi_align(on_1[0], on_1[1], 7, 0.25, 2, True)
    assert torch.cuda.current_device() == 0
    for a, b in zip([*got, got_inference], [*expected, inference], strict=True):
        assert a.device == torch.device("cuda:1")
        assert torch.equal(a.cpu(), b.cpu())


def test_cuda_graph_of_inference_calls(rng):
    # plain inference calls skip torch's dispatcher (roiops.ops.call): the same kernels,
    # capturable as a deployed detector's graph captures them
    x = torch.randn(2, 16, 50, 68, device="cuda")
    rois = cuda(detection_rois(rng, 2, 64, 200, 272))

    def infer():
        with torch.no_grad():
            return (
                roiops.roi_align(x, rois, 7, 0.25, 2, True),
                roiops.roi_align(x, rois, 7, 0.25, 0, False, "max"),
                roiops.roi_pool(x, rois, 7, 0.25),
            )

    graph, captured = capture(infer, warmups=2)
    x.copy_(torch.randn_like(x))
    rois.copy_(cuda(detection_rois(rng, 2, 64, 200, 272)))
    graph.replay()
    torch.cuda.synchronize()
    for got, expected in zip(captured, infer(), strict=True):
        assert torch.equal(got, expected)


def test_backward_bitwise_reproducible_where_torchvision_is_not(rng):
    x = torch.randn(2, 64, 100, 136, device="cuda", requires_grad=True)
    rois = cuda(detection_rois(rng, 2, 2000, 400, 544))
    grad7 = torch.randn(2000, 64, 7, 7, device="cuda")

    def digest(t):
        return hashlib.sha1(t.cpu().numpy().tobytes()).hexdigest()

    for i in range(3):
        hashes = {digest(run_all_ops(x, rois, grad7)[i]) for _ in range(5)}
        assert len(hashes) == 1


def test_bad_box_values_give_nan_not_an_error(rng, monkeypatch):
    x = torch.randn(2, 4, 20, 20, device="cuda", requires_grad=True)
    rois = cuda([[0, 1.0, 1, 30, 30], [2, 1.0, 1, 30, 30], [0.5, 1, 1, 9, 9],
                 [0, float("nan"), 1, 9, 9], [1, 0.0, 0, 40, 40]])  # fmt: skip
    monkeypatch.delenv("ROIOPS_CHECK_VALUES", raising=False)
    for mode in ("avg", "max"):
        out = roiops.roi_align(x, rois, 2, 0.5, 2, True, mode)
        assert torch.isnan(out[1:4]).all() and torch.isfinite(out[[0, 4]]).all()
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out).nan_to_num())
        good = roiops.roi_align(x, rois[[0, 4]], 2, 0.5, 2, True, mode)
        (g_good,) = torch.autograd.grad(good, x, torch.ones_like(good))
        torch.testing.assert_close(g, g_good)
    out = roiops.roi_pool(x, rois, 2, 0.5)
    assert torch.isnan(out[1:4]).all() and torch.isfinite(out[[0, 4]]).all()
    # finite coordinates whose side overflows float32 once scaled (by 2)
    wide = cuda([[0, 1.0, 1, 9, 9], [0, -1e38, 1, 1e38, 9]])
    for out in (roiops.roi_pool(x, wide, 2, 2.0), roiops.roi_align(x, wide, 2, 2.0, 2)):
        assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()
    monkeypatch.setenv("ROIOPS_CHECK_VALUES", "1")
    with pytest.raises(ValueError, match="batch indices"):
        roiops.roi_align(x, rois[:3], 2, 0.5)
    with pytest.raises(ValueError, match="NaN or infinite"):
        roiops.roi_align(x, rois[3:], 2, 0.5)
    with pytest.raises(ValueError, match="box 1 .* overflows torch.float32"):
        roiops.roi_pool(x, wide, 2, 2.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(rng, dtype):
    x = torch.randn(2, 16, 50, 68, device="cuda")
    rois = cuda(detection_rois(rng, 2, 200, 200, 272))
    xh = x.to(dtype).requires_grad_()
    out = roiops.roi_align(xh, rois, 7, 0.25, 2, True)
    ref = roiops.roi_align(xh.detach().float(), rois, 7, 0.25, 2, True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    out.backward(torch.ones_like(out))
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad).all()


def test_random_boxes_with_degenerate_ones(rng):
    # boxes partly outside the map, inverted and tiny, against the NumPy reference
    x = torch.randn(2, 5, 9, 11, device="cuda", dtype=torch.float64)
    rois = cuda(random_rois(rng, 2, 40, 18, 22), torch.float64)
    for mode in ("avg", "max", "onnx_max"):
        out = roiops.roi_align(x, rois, 3, 0.5, 0, False, mode)
        with roiops.use_backend("reference"):
            ref = roiops.roi_align(x, rois, 3, 0.5, 0, False, mode)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_autocast_cuda_dtypes_as_torchvision(rng):
    x = torch.randn(2, 16, 50, 68, device="cuda")
    rois = cuda(detection_rois(rng, 2, 64, 200, 272))
    for dtype in (torch.float16, torch.bfloat16):
        for xin, rin in [(x, rois), (x.to(dtype), rois), (x, rois.to(dtype))]:
            with torch.autocast("cuda", dtype=dtype):
                ours = roiops.roi_align(xin, rin, 7, 0.25, 2, True)
                theirs = tv_ops.roi_align(xin, rin, 7, 0.25, 2, True)
                pooled = roiops.roi_pool(xin, rin, 7, 0.25)
            assert ours.dtype == theirs.dtype == pooled.dtype == xin.dtype
            # both accumulate in float32 and round once; FMA moves the float32 sum by an
            # ulp or so, which can round to the neighbouring half value (bfloat16's ulp
            # is 2**-7 relative)
            rtol, atol = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 1e-3),
                          torch.bfloat16: (1.6e-2, 1e-2)}[ours.dtype]  # fmt: skip
            torch.testing.assert_close(ours, theirs, rtol=rtol, atol=atol)


def test_torch_compile_every_op_on_cuda_matches_eager():
    from test_integration import EveryOp, every_op_inputs

    def to_cuda(value):
        if isinstance(value, torch.Tensor):
            return value.cuda()
        if isinstance(value, dict):
            return {k: to_cuda(v) for k, v in value.items()}
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            return [to_cuda(v) for v in value]
        return value

    x, *rest = (to_cuda(v) for v in every_op_inputs(31))
    x.requires_grad_()
    model = EveryOp().cuda()  # (DeformRoIPoolPack's layers)
    out = torch.compile(model, fullgraph=True)(x, *rest)
    eager = model(x, *rest)
    assert torch.equal(out, eager)  # the same kernels, deterministic
    grad = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, x, grad)
    (theirs,) = torch.autograd.grad(eager, x, grad)
    assert torch.equal(ours, theirs)


def reference_s_bits_again_and_no_sync(step):
    """``step()`` (float64 outputs and gradients): the reference backend's to rounding, the
    same bits when run again, and no host synchronisation then; its first results."""
    first = step()
    with roiops.use_backend("reference"):
        expected = step()
    for ours, ref in zip(first, expected, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(map(torch.equal, again, first))
    return first


def test_deform_roi_pool_on_cuda(rng):
    # deformable RoI pooling: the reference's numbers, the same bits run after run, no
    # host synchronisation, and a captured graph replayed with new offsets in the same
    # buffers gives what an eager call with them gives
    x = torch.randn(2, 16, 50, 68, device="cuda", dtype=torch.float64, requires_grad=True)
    rois = cuda(detection_rois(rng, 2, 64, 200, 272), torch.float64)
    offset = cuda(rng.standard_normal((64, 2, 7, 7)), torch.float64).requires_grad_()
    grad = torch.randn(64, 16, 7, 7, device="cuda", dtype=torch.float64)

    def step():
        out = roiops.deform_roi_pool(x, rois, offset, 7, 0.25, 0)
        return [out, *torch.autograd.grad(out, [x, offset], grad)]

    first = reference_s_bits_again_and_no_sync(step)
    graph, captured = capture(step)
    with torch.no_grad():
        offset.mul_(-0.5)
    graph.replay()
    torch.cuda.synchronize()
    assert all(map(torch.equal, captured, step()))
    assert not torch.equal(captured[0], first[0])


def test_deform_ps_roi_pool_on_cuda(rng):
    # Deformable ConvNets' own pooling (plain and position-sensitive, 4 x 4 samples a
    # bin): the reference's numbers (float64), the same bits run after run, no host
    # synchronisation; the original kernel written out, in float32, within rounding
    from roiops.bench import dcn_deform_ps_roi_pool

    rois = cuda(detection_rois(rng, 2, 64, 200, 272), torch.float64)
    for group in (1, 7):
        x = torch.randn(2, 4 * group * group, 50, 68, device="cuda", dtype=torch.float64,
                        requires_grad=True)  # fmt: skip
        offset = cuda(rng.standard_normal((64, 2, 7, 7)), torch.float64).requires_grad_()
        grad = torch.randn(64, 4, 7, 7, device="cuda", dtype=torch.float64)

        def step(x=x, offset=offset, grad=grad, group=group):
            out = roiops.deform_ps_roi_pool(x, rois, offset, 7, 0.25, group, None, 4, 0.1)
            return [out, *torch.autograd.grad(out, [x, offset], grad)]

        first = reference_s_bits_again_and_no_sync(step)
        theirs = dcn_deform_ps_roi_pool(x.detach().float(), rois.float(), offset.detach().float(),
                                        0.25, 7, group, None, 4, 0.1)  # fmt: skip
        torch.testing.assert_close(theirs.double(), first[0], rtol=1e-4, atol=1e-4)


def test_crop_and_resize_on_cuda(rng):
    # TensorFlow's crop_and_resize: the reference's numbers (float64), the same bits run
    # after run, no host synchronisation; TensorFlow's kernel written out, in float32,
    # within rounding
    from roiops.bench import tf_crop_and_resize

    x = torch.randn(2, 16, 50, 68, device="cuda", dtype=torch.float64, requires_grad=True)
    boxes = cuda(rng.uniform(-0.2, 1.2, (64, 4)), torch.float64).requires_grad_()
    indices = cuda(rng.integers(0, 2, 64), torch.int64)
    grad = torch.randn(64, 16, 14, 14, device="cuda", dtype=torch.float64)
    for method in ("bilinear", "nearest"):

        def step(method=method):
            out = roiops.crop_and_resize(x, boxes, indices, 14, method, 0.5)
            leaves = [x, boxes] if method == "bilinear" else [x]
            return [out, *torch.autograd.grad(out, leaves, grad)]

        first = reference_s_bits_again_and_no_sync(step)
        theirs = tf_crop_and_resize(x.detach().float(), boxes.detach().float(), indices, (14, 14),
                                    method, 0.5)  # fmt: skip
        torch.testing.assert_close(theirs.double(), first[0], rtol=1e-4, atol=1e-4)


def test_riroi_align_rotated_on_cuda(rng):
    # ReDet's rotation-invariant RoIAlign: the reference's numbers (float64), the same
    # bits run after run, no host synchronisation (the turn's shifts and weights are
    # computed on the device); a half map's result within half's rounding of float32's
    from test_roi_align_rotated import rotated_rois

    x = torch.randn(2, 32, 50, 68, device="cuda", dtype=torch.float64, requires_grad=True)
    rois = cuda(rotated_rois(rng, 2, 64, 200, 272, degrees=False), torch.float64)
    rois[:, 5] *= 3  # (several turns)
    grad = torch.randn(64, 32, 7, 7, device="cuda", dtype=torch.float64)

    def step():
        out = roiops.riroi_align_rotated(x, rois, 7, 0.25, 2, 8, True)
        return [out, *torch.autograd.grad(out, [x], grad)]

    first = reference_s_bits_again_and_no_sync(step)
    half = roiops.riroi_align_rotated(x.detach().half(), rois.float(), 7, 0.25, 2, 8, True)
    torch.testing.assert_close(half.double(), first[0], rtol=4e-3, atol=4e-3)


def test_bezier_align_on_cuda(rng):
    # BezierAlign: the reference's numbers (float64, to rounding), the same bits run after
    # run, no host synchronisation
    from roiops.bench import random_beziers

    x = torch.randn(2, 16, 50, 68, device="cuda", dtype=torch.float64, requires_grad=True)
    beziers = cuda(random_beziers(rng, 2, 64, 200, 272), torch.float64)
    grad = torch.randn(64, 16, 8, 32, device="cuda", dtype=torch.float64)

    def step():
        out = roiops.bezier_align(x, beziers, (8, 32), 0.25, 0)
        return [out, *torch.autograd.grad(out, [x], grad)]

    reference_s_bits_again_and_no_sync(step)


def test_simple_roi_align_on_cuda(rng):
    # PointRend's SimpleRoIAlign: the reference's numbers (float64, to rounding; boxes
    # past the map's edges, where its zero padding shows), the same bits run after run, no
    # host synchronisation; mmcv's grid_sample formulation within float32's rounding
    from roiops.bench import mmcv_simple_roi_align

    x = torch.randn(2, 16, 50, 68, device="cuda", dtype=torch.float64, requires_grad=True)
    rois = cuda(random_rois(rng, 2, 64, 200, 272, min_size=0.0), torch.float64)
    rois = rois[torch.argsort(rois[:, 0], stable=True)]
    grad = torch.randn(64, 16, 14, 14, device="cuda", dtype=torch.float64)
    for aligned in (True, False):

        def step(aligned=aligned):
            out = roiops.simple_roi_align(x, rois, 14, 0.25, aligned)
            return [out, *torch.autograd.grad(out, [x], grad)]

        first = reference_s_bits_again_and_no_sync(step)
        theirs = mmcv_simple_roi_align(x.detach().float(), rois.float(), (14, 14), 0.25, aligned)
        torch.testing.assert_close(theirs.double(), first[0], rtol=1e-4, atol=1e-4)
    # (mmcv's grid_sample has no deterministic CUDA backward; roiops' runs under the switch)
    torch.use_deterministic_algorithms(True)
    try:
        again = step()
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(map(torch.equal, again, first))


def test_roi_point_sample_on_cuda(rng):
    # PointRend's point features: the reference's numbers (float64, to rounding), each
    # RoI's own points and one set for all, the same bits run after run, no host
    # synchronisation
    x = torch.randn(2, 16, 50, 68, device="cuda", dtype=torch.float64, requires_grad=True)
    rois = cuda(random_rois(rng, 2, 64, 200, 272, min_size=0.0), torch.float64)
    grad = torch.randn(64, 16, 196, device="cuda", dtype=torch.float64)
    for count in (64, 1):
        points = cuda(rng.uniform(-0.2, 1.2, (count, 196, 2)), torch.float64)

        def step(points=points):
            out = roiops.roi_point_sample(x, rois, points, 0.25)
            return [out, *torch.autograd.grad(out, [x], grad)]

        reference_s_bits_again_and_no_sync(step)
