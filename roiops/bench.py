"""Ratio benchmarks against torchvision, measured in the same run on the same inputs.

Forward and backward are timed separately, each as the op alone: the forward op, and
the backward op given a fixed output gradient (torchvision's ``_roi_align_backward`` /
``_roi_pool_backward`` vs ours). Both sides allocate their outputs. The figure is the
median of at least ``repeat`` timed calls (more for short calls, see
``time_interleaved``) after one warm-up call (which also pays Numba's one-off JIT/cache
load). The two libraries' calls alternate (torchvision, roiops, torchvision, ...), so a
slow phase of a shared machine slows both sides of a ratio rather than one.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

import roiops  # noqa: F401  (registers torch.ops.roiops)


@dataclass(frozen=True)
class Case:
    name: str
    op: str  # "roi_align" or "roi_pool"
    shape: tuple[int, int, int, int]  # N, C, H, W of the finest (or only) level
    num_rois: int  # in all
    box_px: tuple[float, float]  # min, max box side in image pixels
    spatial_scale: float = 1 / 8
    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = True
    levels: int = 1  # > 1: an FPN pyramid, each level half the size of the one before
    channels_last: bool = False  # the feature maps lie NHWC in memory


def cases(quick: bool = False, device: str = "cpu") -> list[Case]:
    if device.startswith("cuda"):
        a = (1, 512, 256, 256)
        b = (2, 256, 200, 272)
        fpn = (8, 256, 200, 272)  # P2 of 800x1088 images; P3-P5 follow
        full = [
            Case("a small sr=0", "roi_align", a, 512, (8, 64), sampling_ratio=0),
            Case("a small sr=2", "roi_align", a, 512, (8, 64), sampling_ratio=2),
            Case("a large sr=0", "roi_align", a, 512, (256, 1024), sampling_ratio=0),
            Case("a large sr=2", "roi_align", a, 512, (256, 1024), sampling_ratio=2),
            Case("b sr=2", "roi_align", b, 1000, (16, 400), spatial_scale=1 / 4),
            Case("fpn 8x512", "roi_align", fpn, 8 * 512, (16, 800), 1 / 4, levels=4),
            Case("a small", "roi_pool", a, 512, (8, 64)),
            Case("b", "roi_pool", b, 1000, (16, 400), spatial_scale=1 / 4),
            Case("b sr=2 NHWC", "roi_align", b, 1000, (16, 400), 1 / 4, channels_last=True),
            Case("b NHWC", "roi_pool", b, 1000, (16, 400), 1 / 4, channels_last=True),
            # R-FCN's class scores: 21 classes x 7 x 7 maps at stride 16, 800x1088 images
            Case("rfcn sr=2", "ps_roi_align", (2, 1029, 50, 68), 600, (32, 512), 1 / 16),
            Case("rfcn", "ps_roi_pool", (2, 1029, 50, 68), 600, (32, 512), 1 / 16),
            # the FPN pooler module against torchvision's (which loops over the levels)
            Case("fpn module", "multi_scale_roi_align", fpn, 8 * 512, (16, 800), 1 / 4, levels=4),
            # mmdet's RoI extractor (its default layer: aligned, sampling_ratio=0) against
            # its loop over the levels with torchvision's roi_align
            Case("mmdet fpn", "single_roi_extractor", fpn, 4096, (16, 800), 1 / 4, 7, 0, levels=4),
        ]
        quick_names = ("a small sr=2", "fpn 8x512", "b")
    else:
        a = (1, 256, 128, 128)
        b = (2, 256, 100, 136)
        full = [
            Case("a small sr=0", "roi_align", a, 512, (8, 64), sampling_ratio=0),
            Case("a small sr=2", "roi_align", a, 512, (8, 64), sampling_ratio=2),
            Case("a large sr=0", "roi_align", a, 512, (128, 512), sampling_ratio=0),
            Case("a large sr=2", "roi_align", a, 512, (128, 512), sampling_ratio=2),
            Case("b sr=0", "roi_align", b, 1024, (16, 200), sampling_ratio=0),
            Case("b sr=2", "roi_align", b, 1024, (16, 200), sampling_ratio=2),
            Case("a small", "roi_pool", a, 512, (8, 64)),
            Case("a large", "roi_pool", a, 512, (128, 512)),
            Case("b", "roi_pool", b, 1024, (16, 200)),
            # R-FCN's class scores: 21 classes x 7 x 7 maps at stride 16, a 600x800 image
            Case("rfcn sr=2", "ps_roi_align", (1, 1029, 38, 50), 300, (32, 400), 1 / 16),
            Case("rfcn sr=0", "ps_roi_align", (1, 1029, 38, 50), 300, (32, 400), 1 / 16, 7, 0),
            Case("rfcn", "ps_roi_pool", (1, 1029, 38, 50), 300, (32, 400), 1 / 16),
            # the FPN pooler module: P2-P5 of 2 images of 400x544, 1024 RoIs
            Case("fpn 2x512", "multi_scale_roi_align", b, 1024, (16, 400), 1 / 4, levels=4),
            Case("mmdet 2x512", "single_roi_extractor", b, 1024, (16, 400), 1 / 4, 7, 0, levels=4),
        ]
        quick_names = ("a small sr=2", "b sr=2", "b")
    return [c for c in full if c.name in quick_names] if quick else full


def fpn_level(boxes: np.ndarray, levels: int) -> np.ndarray:
    """FPN's level mapper (Lin et al. eq. 1, as torchvision's LevelMapper): 0-based level
    of each (x1, y1, x2, y2) box; level 0 is the finest (P2)."""
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    k = np.floor(4 + np.log2(side / 224) + 1e-6)
    return (np.clip(k, 2, 2 + levels - 1) - 2).astype(np.int64)


def random_beziers(rng, batch_size, count, image_h, image_w):
    """``[K, 17]`` text-like instances: a top curve across the image (some beyond it), a
    bottom curve below it, listed from its end as ABCNet's annotations are."""
    x0 = rng.uniform(-0.2 * image_w, 0.8 * image_w, count)
    y0 = rng.uniform(-0.2 * image_h, 0.8 * image_h, count)
    span = rng.uniform(2, 0.6 * image_w, count)
    thickness = rng.uniform(0.5, 0.4 * image_h, count)
    top_x = x0[:, None] + span[:, None] * np.linspace(0, 1, 4) + rng.normal(0, 1, (count, 4))
    top_y = y0[:, None] + rng.normal(0, 2, (count, 4))
    bottom_x = top_x + rng.normal(0, 1, (count, 4))
    bottom_y = top_y + thickness[:, None] + rng.normal(0, 1, (count, 4))
    top = np.stack([top_x, top_y], 2).reshape(count, 8)
    bottom = np.stack([bottom_x, bottom_y], 2)[:, ::-1].reshape(count, 8)
    return np.concatenate([rng.integers(0, batch_size, (count, 1)), top, bottom], 1)


@dataclass
class Level:
    """One pyramid level's tensors: input, rois for roiops (float32 for half inputs, as
    roiops.roi_align passes them), rois for torchvision (in the input dtype, which it
    requires), the output gradient and the level's spatial_scale."""

    x: torch.Tensor
    rois: torch.Tensor
    tv_rois: torch.Tensor
    grad: torch.Tensor
    spatial_scale: float


def make_inputs(case: Case, device: str, dtype: torch.dtype, seed: int = 0) -> list[Level]:
    rng = np.random.default_rng(seed)
    n, c, h, w = case.shape
    img_h, img_w = h / case.spatial_scale, w / case.spatial_scale
    sides = rng.uniform(*case.box_px, size=(case.num_rois, 2))
    x1 = rng.uniform(0, np.maximum(img_w - sides[:, 0], 1))
    y1 = rng.uniform(0, np.maximum(img_h - sides[:, 1], 1))
    batch = rng.integers(0, n, case.num_rois)
    boxes = np.stack([x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], axis=1)
    level = fpn_level(boxes, case.levels) if case.levels > 1 else np.zeros(len(boxes), int)
    roi_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    out = []
    for lv in range(case.levels):
        shape = (n, c, -(-h // 2**lv), -(-w // 2**lv))
        x = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
        layout = torch.channels_last if case.channels_last else torch.contiguous_format
        pick = level == lv
        rois = torch.from_numpy(np.concatenate([batch[pick, None], boxes[pick]], axis=1))
        # position-sensitive ops have one output channel per output_size**2 input channels
        grad_c = c // case.output_size**2 if case.op.startswith("ps_") else c
        grad = rng.standard_normal((int(pick.sum()), grad_c, case.output_size, case.output_size))
        out.append(
            Level(
                x.to(device, dtype).contiguous(memory_format=layout),
                rois.to(device, roi_dtype),
                rois.to(device, dtype),
                torch.from_numpy(grad.astype(np.float32)).to(device, dtype),
                case.spatial_scale / 2**lv,
            )
        )
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, repeat: int, calls: int = 1) -> float:
    return time_interleaved({"fn": fn}, device, repeat, calls)["fn"]


MIN_TIMED_S = 0.2  # short calls get more rounds: a median of 5 sub-ms calls is noise


def time_interleaved(fns: dict[str, Callable[[], object]], device: str, repeat: int,
                     calls: int = 1):  # fmt: skip
    """``{name: median ms}``: one warm-up call each, then rounds that call every function
    once in turn: at least ``repeat`` rounds, and more (up to 100) until the timed calls
    add up to ``MIN_TIMED_S`` when they are short. A sample is one call and a
    synchronisation (the latency a caller waits for: on a GPU the host's time to launch
    the call adds to the kernels'), or with ``calls`` > 1, that many calls back to back
    and one synchronisation, per call (once the host runs ahead of the GPU, the GPU's
    time: what a training loop that does not wait sees)."""
    samples = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        _sync(device)
    rounds, timed_s = 0, 0.0
    while rounds < repeat or (timed_s < MIN_TIMED_S and rounds < 100):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            _sync(device)
            dt = time.perf_counter() - t0
            samples[name].append(dt * 1e3 / calls)
            timed_s += dt
        rounds += 1
    return {name: statistics.median(v) for name, v in samples.items()}


def _level_callables(case: Case, lv: Level):
    """{(library, direction): zero-argument callable} for one pyramid level."""
    import torchvision  # noqa: F401  (registers torch.ops.torchvision)

    tv = torch.ops.torchvision
    ro = torch.ops.roiops
    x, rois, tv_rois, grad = lv.x, lv.rois, lv.tv_rois, lv.grad
    n, c, h, w = x.shape
    s, p, r, a = lv.spatial_scale, case.output_size, case.sampling_ratio, case.aligned
    if case.op == "ps_roi_align":
        _, mapping = tv.ps_roi_align(x, tv_rois, s, p, p, r)
        return {
            ("torchvision", "forward"): lambda: tv.ps_roi_align(x, tv_rois, s, p, p, r),
            ("roiops", "forward"): lambda: ro.ps_roi_align(x, rois, s, p, p, r),
            ("torchvision", "backward"): lambda: tv._ps_roi_align_backward(
                grad, tv_rois, mapping, s, p, p, r, n, c, h, w
            ),
            ("roiops", "backward"): lambda: ro.ps_roi_align_backward(
                grad, rois, s, p, p, r, n, c, h, w
            ),
        }
    if case.op == "ps_roi_pool":
        _, mapping = tv.ps_roi_pool(x, tv_rois, s, p, p)
        return {
            ("torchvision", "forward"): lambda: tv.ps_roi_pool(x, tv_rois, s, p, p),
            ("roiops", "forward"): lambda: ro.ps_roi_pool(x, rois, s, p, p),
            ("torchvision", "backward"): lambda: tv._ps_roi_pool_backward(
                grad, tv_rois, mapping, s, p, p, n, c, h, w
            ),
            ("roiops", "backward"): lambda: ro.ps_roi_pool_backward(
                grad, rois, s, p, p, n, c, h, w
            ),
        }
    if case.op == "roi_align":
        return {
            ("torchvision", "forward"): lambda: tv.roi_align(x, tv_rois, s, p, p, r, a),
            ("roiops", "forward"): lambda: ro.roi_align(x, rois, s, p, p, r, a),
            ("torchvision", "backward"): lambda: tv._roi_align_backward(
                grad, tv_rois, s, p, p, n, c, h, w, r, a
            ),
            ("roiops", "backward"): lambda: ro.roi_align_backward(
                grad, rois, s, p, p, r, a, n, c, h, w
            ),
        }
    _, tv_argmax = tv.roi_pool(x, tv_rois, s, p, p)
    _, ro_argmax = ro.roi_pool(x, rois, s, p, p)
    return {
        ("torchvision", "forward"): lambda: tv.roi_pool(x, tv_rois, s, p, p),
        ("roiops", "forward"): lambda: ro.roi_pool(x, rois, s, p, p),
        # without autograd roiops.roi_pool stores no argmax; torchvision always does
        ("torchvision", "inference"): lambda: tv.roi_pool(x, tv_rois, s, p, p),
        ("roiops", "inference"): lambda: ro.roi_pool_inference(x, rois, s, p, p),
        ("torchvision", "backward"): lambda: tv._roi_pool_backward(
            grad, tv_rois, tv_argmax, s, p, p, n, c, h, w
        ),
        ("roiops", "backward"): lambda: ro.roi_pool_backward(grad, ro_argmax, rois, s, n, c, h, w),
    }


def _callables(case: Case, levels: list[Level]):
    """Every level in turn, as torchvision's MultiScaleRoIAlign runs them."""
    per_level = [_level_callables(case, lv) for lv in levels]

    def run_all(key):
        return lambda: [fns[key]() for fns in per_level]

    return {key: run_all(key) for key in per_level[0]}


def min_bytes(levels: list[Level]) -> int:
    """Bytes an op must move at the least: the feature maps once and the pooled bins once
    (forward reads the one and writes the other, backward the reverse)."""
    return sum(
        lv.x.numel() * lv.x.element_size() + lv.grad.numel() * lv.grad.element_size()
        for lv in levels
    )


# GPU memory bandwidth peaks (bytes/s) by device-name fragment; ROIOPS_PEAK_GBPS overrides.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100": 2.0e12}


def peak_bandwidth(device: str) -> float | None:
    if os.environ.get("ROIOPS_PEAK_GBPS"):
        return float(os.environ["ROIOPS_PEAK_GBPS"]) * 1e9
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for fragment, peak in PEAK_BANDWIDTH.items():
        if fragment in name:
            return peak
    return None


@dataclass
class Row:
    case: str
    op: str
    direction: str
    torchvision_ms: float
    roiops_ms: float
    roiops_bandwidth: float | None = None  # fraction of the device's peak, GPU only

    @property
    def speedup(self) -> float:
        return self.torchvision_ms / self.roiops_ms


def directions(case: Case) -> tuple[str, ...]:
    """What is timed: forward and backward; for roi_pool also the forward without
    autograd ("inference"), which roiops runs without storing the argmax; for the FPN
    pooler module the forward and forward+backward through autograd ("train")."""
    if case.op == "roi_pool":
        return ("forward", "backward", "inference")
    if case.op in MODULE_OPS:
        return ("forward", "train")
    return ("forward", "backward")


def callables(case: Case, levels: list[Level]):
    """{(library, direction): zero-argument callable} of a case on its inputs."""
    if case.op == "multi_scale_roi_align":
        return _module_callables(case, levels)
    if case.op == "single_roi_extractor":
        return _mmdet_callables(case, levels)
    return _callables(case, levels)


# the cases of a pooler module, timed forward and forward+backward through autograd
MODULE_OPS = ("multi_scale_roi_align", "single_roi_extractor")


def _module_callables(case: Case, levels: list[Level]):
    """torchvision's MultiScaleRoIAlign module against roiops', on the same pyramid."""
    import torchvision

    names = [f"p{i + 2}" for i in range(len(levels))]
    features = {name: lv.x for name, lv in zip(names, levels, strict=True)}
    rois = torch.cat([lv.rois for lv in levels])
    n = case.shape[0]
    boxes = [rois[rois[:, 0] == i, 1:].to(levels[0].x.dtype) for i in range(n)]
    image = (round(case.shape[2] / case.spatial_scale), round(case.shape[3] / case.spatial_scale))
    shapes = [image] * n
    grad = torch.randn((rois.shape[0], case.shape[1], case.output_size, case.output_size),
                       dtype=levels[0].x.dtype, device=levels[0].x.device)  # fmt: skip
    modules = {
        "torchvision": torchvision.ops.MultiScaleRoIAlign(
            names, case.output_size, case.sampling_ratio
        ),
        "roiops": roiops.MultiScaleRoIAlign(names, case.output_size, case.sampling_ratio),
    }

    def train(module):
        leaves = {k: v.detach().requires_grad_() for k, v in features.items()}
        torch.autograd.grad(module(leaves, boxes, shapes), list(leaves.values()), grad)

    fns = {}
    for lib, module in modules.items():
        fns[(lib, "forward")] = lambda m=module: m(features, boxes, shapes)
        fns[(lib, "train")] = lambda m=module: train(m)
    return fns


def _mmdet_callables(case: Case, levels: list[Level]):
    """mmdet's ``SingleRoIExtractor`` against roiops': mmdet 3's forward (its level
    mapping, then a loop over the levels, a ``nonzero`` each) with torchvision's
    roi_align as its layer (mmcv's ``RoIAlign(use_torchvision=True)``), on the same
    pyramid and boxes."""
    import torchvision

    feats = [lv.x for lv in levels]
    rois = torch.cat([lv.rois for lv in levels]).to(feats[0].dtype)
    strides = [round(1 / lv.spatial_scale) for lv in levels]
    size, ratio, aligned = case.output_size, case.sampling_ratio, case.aligned
    layer = dict(type="RoIAlign", output_size=size, sampling_ratio=ratio, aligned=aligned)
    extractor = roiops.SingleRoIExtractor(layer, case.shape[1], strides)
    grad = torch.randn((rois.shape[0], case.shape[1], size, size), dtype=feats[0].dtype,
                       device=feats[0].device)  # fmt: skip

    def mmdet(fs):
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        target = torch.floor(torch.log2(scale / 56 + 1e-6)).clamp(min=0, max=len(fs) - 1).long()
        out = fs[0].new_zeros(rois.size(0), case.shape[1], size, size)
        for i, (f, stride) in enumerate(zip(fs, strides, strict=True)):
            inds = (target == i).nonzero(as_tuple=False).squeeze(1)
            if inds.numel() > 0:
                out[inds] = torchvision.ops.roi_align(f, rois[inds], size, 1 / stride, ratio,
                                                      aligned)  # fmt: skip
            else:
                out = out + f.sum() * 0.0
        return out

    def train(fn):
        leaves = [f.detach().requires_grad_() for f in feats]
        torch.autograd.grad(fn(leaves), leaves, grad)

    return {
        ("torchvision", "forward"): lambda: mmdet(feats),
        ("roiops", "forward"): lambda: extractor(feats, rois),
        ("torchvision", "train"): lambda: train(mmdet),
        ("roiops", "train"): lambda: train(lambda fs: extractor(fs, rois)),
    }


def run(
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    quick: bool = False,
    repeat: int = 5,
    progress: bool = True,
    calls: int = 1,
) -> list[Row]:
    """Every case's rows, roiops against torchvision in the same rounds (``calls``: see
    ``time_interleaved``)."""
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    except ImportError as e:  # pragma: no cover - torchvision is a bench extra
        raise SystemExit("roiops bench needs torchvision: pip install 'roiops[bench]'") from e
    from tqdm import tqdm

    rows = []
    todo = cases(quick, device)
    peak = peak_bandwidth(device)
    spin_up(device)
    total = sum(2 * len(directions(case)) for case in todo)
    bar = tqdm(total=total, disable=not progress, desc="bench", leave=False)
    for case in todo:
        levels = make_inputs(case, device, dtype)
        fns = callables(case, levels)
        for direction in directions(case):
            libs = ("torchvision", "roiops")
            t = time_interleaved(
                {lib: fns[(lib, direction)] for lib in libs}, device, repeat, calls
            )
            bar.update(len(libs))
            row = Row(case.name, case.op, direction, t["torchvision"], t["roiops"])
            if peak:
                row.roiops_bandwidth = min_bytes(levels) / (t["roiops"] / 1e3) / peak
            rows.append(row)
    bar.close()
    return rows


# GPU work before the first timed case: an idle GPU runs at a lower clock for its first
# few hundred ms of work (at 004ba59 the first case, `a small sr=0`, had 2-3x the host
# gap between its per-call and back-to-back times of every other case, for both
# libraries)
SPIN_UP_S = 0.5


def spin_up(device: str, seconds: float = SPIN_UP_S) -> None:
    """Keep a CUDA ``device`` busy with matrix products for ``seconds`` (nothing on CPU)."""
    if not device.startswith("cuda"):
        return
    a = torch.randn(2048, 2048, device=device)
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            a = torch.mm(a, a).clamp_(-1, 1)
        _sync(device)


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_table(rows: list[Row], title: str) -> str:
    op_width = max([10, *(len(r.op) for r in rows)])
    lines = [
        title,
        f"{'op':<{op_width}} {'case':<14} {'direction':<9} {'torchvision ms':>15} "
        f"{'roiops ms':>10} {'speed-up':>9}",
    ]
    for r in rows:
        bandwidth = "" if r.roiops_bandwidth is None else f"  {r.roiops_bandwidth:6.1%} of peak BW"
        lines.append(
            f"{r.op:<{op_width}} {r.case:<14} {r.direction:<9} {r.torchvision_ms:>15.2f} "
            f"{r.roiops_ms:>10.2f} {r.speedup:>8.1f}x{bandwidth}"
        )
    for direction in ("forward", "backward", "inference", "train"):
        sel = [r.speedup for r in rows if r.direction == direction]
        if sel:
            lines.append(f"geometric mean speed-up, {direction}: {geometric_mean(sel):.1f}x")
    return "\n".join(lines)


def to_json(rows: list[Row], meta: dict) -> str:
    return json.dumps(
        {"meta": meta, "rows": [asdict(r) | {"speedup": r.speedup} for r in rows]}, indent=2
    )


# ------------------------------------------------------------------ the side benchmarks
def side_benchmark(description: str, title: str, cases: dict, calls: Callable, libraries,
                   ratio: tuple[str, str], argv=None) -> list[dict]:  # fmt: skip
    """The ``benchmarks/`` scripts outside ``roiops bench`` (an op with no like-for-like
    anchor, or its own): parse ``--device``, ``--repeat``, ``--json``; for each case of
    ``cases[kind]`` (kind ``"cpu"`` or ``"cuda"``; ``(name, *arguments)``) time
    ``calls(*arguments, device)``' functions ``{(library, direction): fn}`` for every
    library, interleaved, forward and train; print a table in ms with the ratio of
    ``ratio[0]``'s time over ``ratio[1]``'s; write the rows as JSON. Returns the rows."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    spin_up(args.device)
    widths = [max(len(lib), 8) for lib in libraries]
    print(f"{title} on {args.device}, ms")
    print(f"{'case':12} {'direction':9} "
          + " ".join(f"{lib:>{w}}" for lib, w in zip(libraries, widths, strict=True))
          + f" {'ratio':>6}")  # fmt: skip
    rows = []
    for name, *arguments in cases[kind]:
        fns = calls(*arguments, args.device)
        for direction in ("forward", "train"):
            t = time_interleaved({lib: fns[(lib, direction)] for lib in libraries},
                                 args.device, args.repeat)  # fmt: skip
            rows.append({"case": name, "direction": direction, **t})
            print(f"{name:12} {direction:9} "
                  + " ".join(f"{t[lib]:>{w}.2f}" for lib, w in zip(libraries, widths, strict=True))
                  + f" {t[ratio[0]] / t[ratio[1]]:5.2f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "ratio": list(ratio), "rows": rows}, f, indent=1)
    return rows


def mmcv_simple_roi_align(features: torch.Tensor, rois: torch.Tensor, output_size,
                          spatial_scale: float, aligned: bool = True) -> torch.Tensor:  # fmt: skip
    """mmcv's ``SimpleRoIAlign.forward`` (PointRend; mmcv 2.x ``ops/point_sample.py``)
    written out in torch, the anchor of ``roiops.simple_roi_align`` (tests, benchmarks):
    ``generate_grid``'s bins' centres (``affine_grid``), sampled by
    :func:`mmcv_roi_point_sample`; rows image by image."""
    import torch.nn.functional as F

    output_size = (output_size, output_size) if isinstance(output_size, int) else output_size
    affine = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=features.device,
                          dtype=features.dtype)  # fmt: skip
    grid = F.affine_grid(affine, torch.Size((1, 1, *output_size)), align_corners=False)
    rel_roi_points = ((grid + 1.0) / 2.0).view(1, -1, 2).expand(rois.size(0), -1, -1)
    point_feats = mmcv_roi_point_sample(features, rois, rel_roi_points, spatial_scale, aligned)
    return point_feats.reshape(rois.size(0), features.size(1), *output_size)


def mmcv_roi_point_sample(features: torch.Tensor, rois: torch.Tensor,
                          rel_roi_points: torch.Tensor, spatial_scale: float,
                          aligned: bool = True) -> torch.Tensor:  # fmt: skip
    """mmcv's ``point_sample`` of ``rel_roi_point_to_rel_img_point``, image by image, as
    mmdet's PointRend head (``_get_fine_grained_point_feats``, one level) and mmcv's
    ``SimpleRoIAlign`` call them, written out in torch: the anchor of
    ``roiops.roi_point_sample``. ``rel_roi_points[K, P, 2]``; ``Tensor[K, C, P]``, rows
    image by image."""
    import torch.nn.functional as F

    point_feats = []
    for batch_ind in range(features.size(0)):
        feat = features[batch_ind].unsqueeze(0)
        inds = rois[:, 0].long() == batch_ind
        if inds.any():
            with torch.no_grad():  # (mmcv's points carry no gradient)
                boxes, points = rois[inds][:, 1:], rel_roi_points[inds]
                xs = points[:, :, 0] * (boxes[:, None, 2] - boxes[:, None, 0])
                ys = points[:, :, 1] * (boxes[:, None, 3] - boxes[:, None, 1])
                xs += boxes[:, None, 0]
                ys += boxes[:, None, 1]
                size = torch.tensor(feat.shape[2:]).flip(0).view(1, 1, 2).to(features)
                rel = (torch.stack([xs, ys], dim=2) / size * spatial_scale).unsqueeze(0)
            point_feat = F.grid_sample(feat, rel * 2.0 - 1.0, align_corners=not aligned)
            point_feats.append(point_feat.squeeze(0).transpose(0, 1))
    return torch.cat(point_feats, dim=0)


def dcn_deform_ps_roi_pool(input: torch.Tensor, rois: torch.Tensor, offset: torch.Tensor | None,
                           spatial_scale: float, pooled_size: int, group_size: int = 1,
                           part_size: int | None = None, sample_per_part: int = 4,
                           trans_std: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Deformable ConvNets' ``DeformablePSROIPooling`` kernel (MXNet; mmdetection 1.x's
    ``deform_roi_pooling``, DCNv2's ``dcn_v2_pooling``: one CUDA kernel, a thread per
    output) written out in torch, every output's samples at once, in the RoIs' dtype:
    the anchor of ``roiops.deform_ps_roi_pool``. Autograd through it gives the kernel's
    gradients: to the input, each sample's bilinear shares; to the offsets, each sample's
    slope between ``floor`` and ``ceil`` (0 on a whole cell). ``offset[K, 2 * classes,
    part_size, part_size]`` or None (the originals' ``no_trans``)."""
    dt = rois.dtype
    K, (_, C, H, W) = rois.shape[0], input.shape
    P = pooled_size
    part = P if part_size is None else part_size
    out_dim = C // (group_size * group_size)
    s, half = torch.tensor(spatial_scale, dtype=dt), torch.tensor(0.5, dtype=dt)
    magnitude = rois[:, 1:].abs()
    whole = magnitude.floor()
    rounded = torch.copysign(whole + (magnitude - whole >= 0.5).to(dt), rois[:, 1:])  # C round
    start = rounded[:, :2] * s - half  # (x, y)
    end = (rounded[:, 2:] + 1) * s - half
    size = torch.clamp(end - start, min=torch.tensor(0.1, dtype=dt).item())
    bin_size = size / P
    step = bin_size / sample_per_part
    index = torch.arange(P, device=rois.device)
    part_of = torch.floor((index.to(dt) / P) * part).long()  # (in the dtype, as the kernel)
    group_of = torch.clamp(torch.floor(index.to(dt) * group_size / P).long(), 0, group_size - 1)
    # the bins' corners [K, P, P, 2] (ph, pw; x, y), moved by their parts' offsets
    corner_x = index.to(dt)[None, None, :] * bin_size[:, None, None, 0] + start[:, None, None, 0]
    corner_y = index.to(dt)[None, :, None] * bin_size[:, None, None, 1] + start[:, None, None, 1]
    corner_x, corner_y = corner_x.expand(K, P, P), corner_y.expand(K, P, P)
    classes = 1 if offset is None else offset.shape[1] // 2
    if offset is None:
        corner_x, corner_y = corner_x[:, None], corner_y[:, None]  # [K, 1, P, P]
    else:
        moved = offset[:, :, part_of][:, :, :, part_of] * trans_std  # [K, 2 * classes, P, P]
        corner_x = corner_x[:, None] + moved[:, 0::2] * size[:, None, None, None, 0]
        corner_y = corner_y[:, None] + moved[:, 1::2] * size[:, None, None, None, 1]
    i = torch.arange(sample_per_part, device=rois.device).to(dt)
    xs = corner_x[..., None, None] + i[None, :] * step[:, None, None, None, None, None, 0]
    ys = corner_y[..., None, None] + i[:, None] * step[:, None, None, None, None, None, 1]
    xs, ys = torch.broadcast_tensors(xs, ys)  # [K, classes, P, P, S, S]
    kept = (xs >= -0.5) & (xs <= W - 0.5) & (ys >= -0.5) & (ys <= H - 0.5)
    xs, ys = xs.clamp(0, W - 1), ys.clamp(0, H - 1)
    x0, y0 = xs.detach().floor(), ys.detach().floor()
    x1, y1 = xs.detach().ceil(), ys.detach().ceil()
    fx, fy = xs - x0, ys - y0
    # each output channel's class and input channel
    channel = torch.arange(out_dim, device=rois.device)
    cls = channel // (out_dim // classes)
    c_in = (channel[:, None, None] * group_size + group_of[None, :, None]) * group_size
    c_in = c_in + group_of[None, None, :]  # [out_dim, P, P]
    n = rois[:, 0].long()
    plane = (n[:, None, None, None] * C + c_in[None]) * (H * W)  # [K, out_dim, P, P]

    def at(yy, xx):  # [K, out_dim, P, P, S, S] values of the map
        cell = (yy[:, cls] * W + xx[:, cls]).long()
        return input.flatten().take(plane[..., None, None] + cell)

    value = (
        (1 - fx[:, cls]) * (1 - fy[:, cls]) * at(y0, x0)
        + (1 - fx[:, cls]) * fy[:, cls] * at(y1, x0)
        + fx[:, cls] * (1 - fy[:, cls]) * at(y0, x1)
        + fx[:, cls] * fy[:, cls] * at(y1, x1)
    )
    kept_c = kept[:, cls]
    total = torch.where(kept_c, value, torch.zeros((), dtype=value.dtype)).sum((-1, -2))
    count = kept_c.sum((-1, -2))
    return torch.where(count > 0, total / count.clamp(min=1).to(dt), torch.zeros((), dtype=dt))


def tf_crop_and_resize(image: torch.Tensor, boxes: torch.Tensor, box_indices: torch.Tensor,
                       crop_size: tuple[int, int], method: str = "bilinear",
                       extrapolation_value: float = 0.0) -> torch.Tensor:  # fmt: skip
    """TensorFlow's ``crop_and_resize`` kernel written out in torch on an NCHW ``image``,
    every sample at once, in the boxes' dtype: the anchor of ``roiops.crop_and_resize``.
    Autograd through it gives TensorFlow's gradients (the image's bilinear shares; the
    boxes' slopes between ``floor`` and ``ceil`` times each position's derivative)."""
    _, _, H, W = image.shape
    dt = boxes.dtype

    def axis(lo, hi, size, crop):  # [K, crop] positions, as TensorFlow computes them
        last = size - 1
        if crop == 1:
            return (0.5 * (lo + hi) * last)[:, None]
        scale = (hi - lo) * last / (crop - 1)
        return lo[:, None] * last + torch.arange(crop, dtype=dt) * scale[:, None]

    ys = axis(boxes[:, 0], boxes[:, 2], H, crop_size[0])
    xs = axis(boxes[:, 1], boxes[:, 3], W, crop_size[1])
    kept = ((ys >= 0) & (ys <= H - 1))[:, :, None] & ((xs >= 0) & (xs <= W - 1))[:, None, :]
    ys, xs = ys.clamp(0, H - 1), xs.clamp(0, W - 1)  # (the kept ones as they are)
    C = image.shape[1]
    plane = (box_indices.long()[:, None] * C + torch.arange(C, device=image.device)) * (H * W)
    flat = image.flatten()

    def at(yy, xx):  # [K, C, crop_h, crop_w] values of the image
        cell = yy.long()[:, :, None] * W + xx.long()[:, None, :]
        return flat.take(plane[:, :, None, None] + cell[:, None]).to(dt)

    if method == "nearest":  # (roundf: halves up, here where positions are >= 0)
        out = at(*(torch.where(v - v.floor() >= 0.5, v.floor() + 1, v.floor()) for v in (ys, xs)))
    else:
        top, left = ys.detach().floor(), xs.detach().floor()
        bottom, right = ys.detach().ceil(), xs.detach().ceil()
        y_lerp, x_lerp = (ys - top)[:, None, :, None], (xs - left)[:, None, None, :]
        upper = at(top, left) + (at(top, right) - at(top, left)) * x_lerp
        lower = at(bottom, left) + (at(bottom, right) - at(bottom, left)) * x_lerp
        out = upper + (lower - upper) * y_lerp
    fill = torch.tensor(extrapolation_value, dtype=dt)
    return torch.where(kept[:, None], out, fill)
