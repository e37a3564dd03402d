"""The article's worked example, computed by the library: RoIPool's quantization vs RoIAlign.

Every number printed comes from ``roiops.reference`` (the spec the kernels are tested
against) and is then confirmed by running the real ops on a "ramp" feature map whose
value at a cell is that cell's column: RoIPool's max over a bin then reveals the last
column it read, RoIAlign's average the mean x of its sampling points (bilinear
interpolation of a linear ramp is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from roiops import reference
from roiops.functional import roi_align, roi_pool


@dataclass(frozen=True)
class Example:
    image_size: int = 800
    box_size: float = 665.0
    stride: int = 32
    output_size: int = 7
    sampling_ratio: int = 2

    @property
    def spatial_scale(self) -> float:
        return 1.0 / self.stride


@dataclass(frozen=True)
class PoolBins:
    """One axis of RoIPool's quantized box: the cell ranges ``[start, end)`` of each bin."""

    roi_start: int
    roi_size: int
    edges: list[tuple[int, int]]


@dataclass(frozen=True)
class AlignBins:
    """One axis of RoIAlign's box: real bin edges and sampling-point coordinates."""

    geometry: reference.RoIAlignGeometry
    edges: list[tuple[float, float]]
    points: list[list[float]]  # per bin, the sampling points along this axis


def roi_pool_bins(ex: Example, feature_size: int) -> PoolBins:
    q = reference.quantize_roi((0.0, 0.0, ex.box_size, ex.box_size), ex.spatial_scale)
    edges = [
        reference.bin_edges(q.start_w, q.width, ex.output_size, p, feature_size)
        for p in range(ex.output_size)
    ]
    return PoolBins(q.start_w, q.width, edges)


def roi_align_bins(ex: Example, sampling_ratio: int, feature_size: int) -> AlignBins:
    g = reference.roi_geometry(
        (0.0, 0.0, ex.box_size, ex.box_size),
        ex.spatial_scale,
        ex.output_size,
        ex.output_size,
        sampling_ratio,
        aligned=False,
    )
    edges = [
        (g.start_w + p * g.bin_size_w, g.start_w + (p + 1) * g.bin_size_w)
        for p in range(ex.output_size)
    ]
    points = [
        [
            float(reference.sample_coordinate(g.start_w, g.bin_size_w, p, i, g.grid_w))
            for i in range(g.grid_w)
        ]
        for p in range(ex.output_size)
    ]
    return AlignBins(g, edges, points)


def _ramp(feature_size: int) -> torch.Tensor:
    """[1, 1, S, S] feature map whose value is the column index."""
    cols = torch.arange(feature_size, dtype=torch.float64)
    return cols.expand(feature_size, feature_size).reshape(1, 1, feature_size, feature_size)


def check_against_ops(ex: Example, pool: PoolBins, align: dict[int, AlignBins], size: int):
    """Run the real ops on the ramp; raise if they disagree with the printed geometry."""
    ramp = _ramp(size)
    box = torch.tensor([[0, 0.0, 0.0, ex.box_size, ex.box_size]], dtype=torch.float64)
    last_col = roi_pool(ramp, box, ex.output_size, ex.spatial_scale)[0, 0, 0]
    first_col = -roi_pool(-ramp, box, ex.output_size, ex.spatial_scale)[0, 0, 0]
    for p, (start, end) in enumerate(pool.edges):
        if (first_col[p], last_col[p]) != (start, end - 1):
            raise AssertionError(f"roi_pool bin {p} read columns {first_col[p]}..{last_col[p]}")
    for ratio, bins in align.items():
        mean_x = roi_align(ramp, box, ex.output_size, ex.spatial_scale, ratio)[0, 0, 0]
        for p, pts in enumerate(bins.points):
            if max(pts) > size - 1:
                continue  # past the last column the border is replicated, not a ramp
            # inside the map, interpolating a ramp returns x itself
            if not math.isclose(float(mean_x[p]), float(np.mean(pts)), abs_tol=1e-9):
                raise AssertionError(f"roi_align bin {p}: {float(mean_x[p])} vs {np.mean(pts)}")


def explain_text(ex: Example | None = None) -> str:
    ex = ex or Example()
    s = ex.stride
    feature = ex.image_size / s
    box = ex.box_size / s
    size = math.ceil(feature)
    lines = [
        f"The article's example: a {ex.image_size}x{ex.image_size} image, a "
        f"{ex.box_size:g}x{ex.box_size:g} box, feature stride {s}, "
        f"{ex.output_size}x{ex.output_size} output.",
        f"  feature map: {ex.image_size} / {s} = {feature:g} cells; "
        f"box: {ex.box_size:g} / {s} = {box:.2f} cells",
        "",
        "RoIPool, quantizing as the article tells it (truncate the box, truncate the bins):",
    ]
    box_cells = math.floor(box)
    bin_real = box_cells / ex.output_size
    bin_cells = math.floor(bin_real)
    covered = bin_cells * ex.output_size
    lines += [
        f"  box {box:.2f} -> {box_cells} cells: {box - box_cells:.2f} cell lost "
        f"= {(box - box_cells) * s:.1f} image pixels",
        f"  bin {box_cells} / {ex.output_size} = {bin_real:.2f} -> {bin_cells} cells: "
        f"{bin_real - bin_cells:.2f} cell lost per bin; the {ex.output_size} bins cover "
        f"{covered} of {box:.2f} cells",
        f"  at stride {s}, 0.1 cell = {0.1 * s:.1f} px and 0.8 cell = {0.8 * s:.1f} px",
        "",
    ]
    pool = roi_pool_bins(ex, size)
    x2 = box  # the box starts at 0
    lines += [
        "RoIPool as roiops.roi_pool computes it (torchvision's and Caffe's rule):",
        f"  edges rounded: 0.00 -> {pool.roi_start}, {x2:.2f} -> "
        f"{pool.roi_start + pool.roi_size - 1}; the end cell is included: "
        f"{pool.roi_size} cells",
        f"  bins of {pool.roi_size} / {ex.output_size} = {pool.roi_size / ex.output_size:.2f} "
        "cells, start floored, end ceiled (cells [start, end)):",
    ]
    true_bin = box / ex.output_size
    worst = 0.0
    row = []
    for p, (a, b) in enumerate(pool.edges):
        err = max(abs(a - p * true_bin), abs(b - (p + 1) * true_bin))
        worst = max(worst, err)
        row.append(f"[{a},{b})")
    lines += [
        "    " + " ".join(row),
        f"  vs the true bins of {true_bin:.2f} cells: worst edge error {worst:.2f} cell "
        f"= {worst * s:.1f} image pixels",
        "",
    ]
    align = {r: roi_align_bins(ex, r, size) for r in (ex.sampling_ratio, 1, 0)}
    g = align[ex.sampling_ratio].geometry
    lines += [
        "RoIAlign (roiops.roi_align): no rounding anywhere.",
        f"  box {float(g.width):.2f} cells, bins {float(g.bin_size_w):.2f} cells: "
        + " ".join(f"[{a:.2f},{b:.2f})" for a, b in align[ex.sampling_ratio].edges[:3])
        + " ...",
    ]
    for ratio, bins in align.items():
        gg = bins.geometry
        label = f"sampling_ratio={ratio}" + (" (adaptive: ceil(bin size))" if ratio <= 0 else "")
        lines.append(
            f"  {label}: {gg.grid_h}x{gg.grid_w} = {gg.grid_h * gg.grid_w} points per bin; "
            f"bin 0 samples x at " + ", ".join(f"{v:.2f}" for v in bins.points[0])
        )
    lines += [
        "  each point reads its 4 neighbouring cells with bilinear weights "
        "(1 - dy) * (1 - dx); backward sends the gradient back with the same weights.",
    ]
    check_against_ops(ex, pool, align, size)
    lines += [
        "",
        "Checked: roiops.roi_pool and roiops.roi_align, run on a ramp feature map, read "
        "exactly these bins and points.",
    ]
    return "\n".join(lines)
