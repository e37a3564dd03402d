"""Ratio benchmarks against torchvision, measured in the same run on the same inputs.

Forward and backward are timed separately, each as the op alone: the forward op, and
the backward op given a fixed output gradient (torchvision's ``_roi_align_backward`` /
``_roi_pool_backward`` vs ours). Both sides allocate their outputs. The figure is the
median of ``repeat`` timed calls after one warm-up call (which also pays Numba's
one-off JIT/cache load).
"""

from __future__ import annotations

import json
import math
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
    shape: tuple[int, int, int, int]  # N, C, H, W
    num_rois: int
    box_px: tuple[float, float]  # min, max box side in image pixels
    spatial_scale: float = 1 / 8
    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = True


def cases(quick: bool = False) -> list[Case]:
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
    ]
    if quick:
        return [c for c in full if c.name in ("a small sr=2", "b sr=2", "b")]
    return full


def make_inputs(case: Case, device: str, dtype: torch.dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, c, h, w = case.shape
    x = torch.from_numpy(rng.standard_normal(case.shape, dtype=np.float32))
    img_h, img_w = h / case.spatial_scale, w / case.spatial_scale
    sides = rng.uniform(*case.box_px, size=(case.num_rois, 2))
    x1 = rng.uniform(0, np.maximum(img_w - sides[:, 0], 1))
    y1 = rng.uniform(0, np.maximum(img_h - sides[:, 1], 1))
    batch = rng.integers(0, n, case.num_rois)
    rois = np.stack([batch, x1, y1, x1 + sides[:, 0], y1 + sides[:, 1]], axis=1)
    rois = torch.from_numpy(rois)
    grad = torch.from_numpy(
        rng.standard_normal(
            (case.num_rois, c, case.output_size, case.output_size), dtype=np.float32
        )
    )
    return x.to(device, dtype), rois.to(device, dtype), grad.to(device, dtype)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, repeat: int) -> float:
    fn()
    _sync(device)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def _callables(case: Case, x, rois, grad):
    """{(library, direction): zero-argument callable} for one case."""
    tv = torch.ops.torchvision
    ro = torch.ops.roiops
    n, c, h, w = x.shape
    s, p, r, a = case.spatial_scale, case.output_size, case.sampling_ratio, case.aligned
    if case.op == "roi_align":
        return {
            ("torchvision", "forward"): lambda: tv.roi_align(x, rois, s, p, p, r, a),
            ("roiops", "forward"): lambda: ro.roi_align(x, rois, s, p, p, r, a),
            ("torchvision", "backward"): lambda: tv._roi_align_backward(
                grad, rois, s, p, p, n, c, h, w, r, a
            ),
            ("roiops", "backward"): lambda: ro.roi_align_backward(
                grad, rois, s, p, p, r, a, n, c, h, w
            ),
        }
    _, tv_argmax = tv.roi_pool(x, rois, s, p, p)
    _, ro_argmax = ro.roi_pool(x, rois, s, p, p)
    return {
        ("torchvision", "forward"): lambda: tv.roi_pool(x, rois, s, p, p),
        ("roiops", "forward"): lambda: ro.roi_pool(x, rois, s, p, p),
        ("torchvision", "backward"): lambda: tv._roi_pool_backward(
            grad, rois, tv_argmax, s, p, p, n, c, h, w
        ),
        ("roiops", "backward"): lambda: ro.roi_pool_backward(grad, ro_argmax, rois, s, n, c, h, w),
    }


@dataclass
class Row:
    case: str
    op: str
    direction: str
    torchvision_ms: float
    roiops_ms: float

    @property
    def speedup(self) -> float:
        return self.torchvision_ms / self.roiops_ms


def run(
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    quick: bool = False,
    repeat: int = 5,
    progress: bool = True,
) -> list[Row]:
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    except ImportError as e:  # pragma: no cover - torchvision is a bench extra
        raise SystemExit("roiops bench needs torchvision: pip install 'roiops[bench]'") from e
    from tqdm import tqdm

    rows = []
    todo = cases(quick)
    bar = tqdm(total=len(todo) * 4, disable=not progress, desc="bench", leave=False)
    for case in todo:
        x, rois, grad = make_inputs(case, device, dtype)
        fns = _callables(case, x, rois, grad)
        for direction in ("forward", "backward"):
            t = {}
            for lib in ("torchvision", "roiops"):
                t[lib] = time_ms(fns[(lib, direction)], device, repeat)
                bar.update()
            rows.append(Row(case.name, case.op, direction, t["torchvision"], t["roiops"]))
    bar.close()
    return rows


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def format_table(rows: list[Row], title: str) -> str:
    lines = [
        title,
        f"{'op':<10} {'case':<14} {'direction':<9} {'torchvision ms':>15} "
        f"{'roiops ms':>10} {'speed-up':>9}",
    ]
    for r in rows:
        lines.append(
            f"{r.op:<10} {r.case:<14} {r.direction:<9} {r.torchvision_ms:>15.2f} "
            f"{r.roiops_ms:>10.2f} {r.speedup:>8.1f}x"
        )
    for direction in ("forward", "backward"):
        sel = [r.speedup for r in rows if r.direction == direction]
        if sel:
            lines.append(f"geometric mean speed-up, {direction}: {geometric_mean(sel):.1f}x")
    return "\n".join(lines)


def to_json(rows: list[Row], meta: dict) -> str:
    return json.dumps(
        {"meta": meta, "rows": [asdict(r) | {"speedup": r.speedup} for r in rows]}, indent=2
    )
