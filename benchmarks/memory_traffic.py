"""How many bytes the NCHW forward kernels must fetch, by program order: a model, no GPU.

For each of `roiops bench --device cuda`'s roi_align and roi_pool cases (float32, NCHW)
this counts, from the reference's sampling grid and bins (``roiops.reference``), the
32-byte sectors that the cells a RoI reads in one channel fall in (one row of a RoI's
window at a time: lanes of a program are a channel's bins), and from them:

- RoI-major (the launchers' order until measured otherwise, ``roiops.gpu.tiles``): the
  programs in flight hold a few dozen RoIs, each reading its window in every channel; on
  a map larger than L2 two RoIs rarely meet in it, so every RoI fetches its own sectors:
  their sum over RoIs and channels;
- RoIs innermost: the programs in flight read every RoI's window in a few channels,
  which L2 keeps, so each sector any RoI reads is fetched about once;

and the time each takes at the GPU's memory bandwidth. Likewise for roi_align's
average-mode backward scatter, whose atomics read and write back the NHWC int64
accumulator's lines (8 bytes a channel) of the cells the RoI's points reach. Beside them,
with ``--results``, the kernel's time measured by `make gpu` (``kernel_configs``, the
launchers' program size, RoI-major) on the GPU of that report, for comparison.

    python benchmarks/memory_traffic.py [--peak-tbps 3.35] \
        [--results benchmarks/results/cuda-h100-004ba59.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch

from roiops import bench
from roiops.reference import roi_align as ref_align
from roiops.reference import roi_pool as ref_pool

SECTOR = 32  # bytes: the unit in which an NVIDIA GPU's L2 fetches from memory


def roi_align_cells(roi, spatial_scale: float, pooled: int, ratio: int, aligned: bool,
                    height: int, width: int) -> set[tuple[int, int]]:  # fmt: skip
    """The cells (y, x) whose values roi_align's sampling points of one RoI read."""
    g = ref_align.roi_geometry(roi[1:5], spatial_scale, pooled, pooled, ratio, aligned)
    cells = set()
    for ph in range(pooled):
        for pw in range(pooled):
            for _, bw in ref_align.bin_samples(g, ph, pw, height, width, np.float64):
                if bw is not None:
                    cells.update((y, x) for y, x, _ in bw.corners())
    return cells


def roi_pool_cells(roi, spatial_scale: float, pooled: int, height: int,
                   width: int) -> set[tuple[int, int]]:  # fmt: skip
    """The cells (y, x) of one RoI's bins (roi_pool reads every cell of a bin)."""
    q = ref_pool.quantize_roi(roi[1:5], spatial_scale)
    cells = set()
    for ph in range(pooled):
        h0, h1 = ref_pool.bin_edges(q.start_h, q.height, pooled, ph, height)
        for pw in range(pooled):
            w0, w1 = ref_pool.bin_edges(q.start_w, q.width, pooled, pw, width)
            cells.update((y, x) for y in range(h0, h1) for x in range(w0, w1))
    return cells


def sectors(cells, width: int, element: int) -> set[tuple[int, int]]:
    """The (row, sector of the row) pairs that ``cells`` of one NCHW plane fall in (a
    plane's rows start on sector boundaries when ``width * element`` is a multiple of
    32 bytes, as in every bench case)."""
    return {(y, x * element // SECTOR) for y, x in cells}


ACCUMULATOR_ELEMENT = 8  # bytes: the backward's int64 fixed-point sums


def case_traffic(case: bench.Case) -> dict:
    """Bytes of one bench case's finest level: the map, the forward's sectors fetched
    RoI-major and with RoIs innermost, and the scatter's accumulator lines read and
    written back likewise (roi_align's cells; 0 for roi_pool)."""
    level = bench.make_inputs(case, "cpu", torch.float32)[0]
    n, c, h, w = level.x.shape
    element = level.x.element_size()
    rois = level.rois.double().numpy()
    per_roi, touched, cells_per_roi, cells_touched = 0, set(), 0, set()
    for roi in rois:
        if case.op == "roi_pool":
            cells = roi_pool_cells(roi, level.spatial_scale, case.output_size, h, w)
        else:
            cells = roi_align_cells(roi, level.spatial_scale, case.output_size,
                                    case.sampling_ratio, case.aligned, h, w)  # fmt: skip
            cells_per_roi += len(cells)
            cells_touched.update((int(roi[0]), *cell) for cell in cells)
        read = sectors(cells, w, element)
        per_roi += len(read)
        touched.update((int(roi[0]), *s) for s in read)
    line = 2 * c * ACCUMULATOR_ELEMENT  # a cell's channels, read and written back
    return {
        "map_bytes": n * c * h * w * element,
        "rois_major_bytes": per_roi * c * SECTOR,
        "rois_inner_bytes": len(touched) * c * SECTOR,
        "scatter_rois_major_bytes": cells_per_roi * line,
        "scatter_once_bytes": len(cells_touched) * line,
    }


def measured_ms(results: dict, case: bench.Case, kind: str = "forward") -> float | None:
    """A kernel's time in a `make gpu` report at the launchers' program size
    (``kernel_configs``: forward 256/8 for roi_align's adaptive grid, 64/1 otherwise;
    the scatter 256/8)."""
    times = results.get("kernel_configs", {}).get(f"{case.op} {case.name}", {})
    if kind == "scatter":
        return times.get("scatter 256/8")
    adaptive = case.op == "roi_align" and case.sampling_ratio <= 0
    return times.get("forward 256/8" if adaptive else "forward 64/1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-tbps", type=float, default=3.35,
                        help="memory bandwidth, TB/s (default: an H100 SXM's)")  # fmt: skip
    parser.add_argument("--results", help="a `make gpu` JSON report, for measured times")
    args = parser.parse_args(argv)
    results = json.loads(pathlib.Path(args.results).read_text()) if args.results else {}
    peak = args.peak_tbps * 1e12

    def ms(nbytes: int) -> str:
        return f"{nbytes / peak * 1e3:8.3f}"

    def measured(case, kind):
        value = measured_ms(results, case, kind)
        return f"{'-' if value is None else f'{value:.3f}':>12}"

    counted = [(case, case_traffic(case)) for case in bench.cases(device="cuda")
               if case.op in ("roi_align", "roi_pool") and not case.channels_last]  # fmt: skip
    print(f"bytes the NCHW forward kernels fetch from memory, and ms at {args.peak_tbps} TB/s")
    print(f"{'op':<10} {'case':<14} {'map MB':>8} {'RoI-major MB':>13} {'ms':>8} "
          f"{'RoIs inner MB':>14} {'ms':>8} {'measured ms':>12}")  # fmt: skip
    for case, t in counted:
        print(f"{case.op:<10} {case.name:<14} {t['map_bytes'] / 1e6:8.0f} "
              f"{t['rois_major_bytes'] / 1e6:13.0f} {ms(t['rois_major_bytes'])} "
              f"{t['rois_inner_bytes'] / 1e6:14.0f} {ms(t['rois_inner_bytes'])} "
              f"{measured(case, 'forward')}", flush=True)  # fmt: skip
    print()
    print("bytes roi_align's average-mode scatter reads and writes back in the int64 accumulator")
    print(f"{'op':<10} {'case':<14} {'acc MB':>8} {'RoI-major MB':>13} {'ms':>8} "
          f"{'each once MB':>14} {'ms':>8} {'measured ms':>12}")  # fmt: skip
    for case, t in counted:
        if case.op != "roi_align":
            continue
        acc = t["map_bytes"] // 4 * ACCUMULATOR_ELEMENT
        print(f"{case.op:<10} {case.name:<14} {acc / 1e6:8.0f} "
              f"{t['scatter_rois_major_bytes'] / 1e6:13.0f} {ms(t['scatter_rois_major_bytes'])} "
              f"{t['scatter_once_bytes'] / 1e6:14.0f} {ms(t['scatter_once_bytes'])} "
              f"{measured(case, 'scatter')}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
