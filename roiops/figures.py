"""The figures of ``roiops explain``: quantization, sampling and gradient routing.

Every coordinate drawn comes from the library: bin edges from the reference's
quantization (``quantize_roi``, ``bin_edges``), sampling points and bilinear
neighbours from ``roi_geometry``/``sample_coordinate``/``bilinear_weights``, and the
gradient maps from running the real ops' backward with a one-hot output gradient.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from roiops import reference  # noqa: E402
from roiops.explain import Example, roi_align_bins, roi_pool_bins  # noqa: E402
from roiops.functional import roi_align, roi_pool  # noqa: E402


def _grid(ax, size: int, title: str) -> None:
    ax.set_xlim(-0.5, size + 0.5)
    ax.set_ylim(size + 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks(range(0, size + 1, 5))
    ax.set_yticks(range(0, size + 1, 5))
    for v in range(size + 1):
        ax.axhline(v, color="0.85", lw=0.5, zorder=0)
        ax.axvline(v, color="0.85", lw=0.5, zorder=0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("feature cells (x)")


def _true_bins(ax, box: float, pooled: int) -> None:
    ax.add_patch(Rectangle((0, 0), box, box, fill=False, ec="tab:blue", lw=2, zorder=3))
    for p in range(1, pooled):
        v = p * box / pooled
        ax.plot([v, v], [0, box], color="tab:blue", lw=0.8, ls="--", zorder=3)
        ax.plot([0, box], [v, v], color="tab:blue", lw=0.8, ls="--", zorder=3)


def _shade_difference(ax, box: float, covered: list[tuple[float, float]]) -> None:
    """Shade the true box area that no bin covers (lost, red) and the area the bins
    cover outside the true box (extra, orange). The bins are the products of one list of
    intervals with itself, so strips along x and along y describe both regions."""
    reach = max(box, max(b for _, b in covered))
    edges = sorted({0.0, box, *[v for iv in covered for v in iv]})
    for lo, hi in zip(edges, edges[1:], strict=False):
        in_bins = any(a <= lo and hi <= b for a, b in covered)
        in_box = hi <= box
        if in_box and not in_bins:
            color, length = "tab:red", box
        elif in_bins and not in_box:
            color, length = "orange", reach
        else:
            continue
        ax.add_patch(Rectangle((lo, 0), hi - lo, length, color=color, alpha=0.25, lw=0))
        ax.add_patch(Rectangle((0, lo), length, hi - lo, color=color, alpha=0.25, lw=0))


def figure_quantization(ex: Example, path: Path) -> None:
    s = ex.stride
    box = ex.box_size / s
    size = math.ceil(ex.image_size / s)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    # left: the article's simplification, truncate the box, then the bin
    box_cells = math.floor(box)
    bin_cells = math.floor(box_cells / ex.output_size)
    article = [(p * bin_cells, (p + 1) * bin_cells) for p in range(ex.output_size)]
    # right: what roi_pool computes (torchvision/Caffe)
    pool = roi_pool_bins(ex, size)
    panels = [
        (axes[0], article, f"the article's rule: {box:.2f} -> {box_cells}, bin -> {bin_cells}"),
        (axes[1], pool.edges, f"roi_pool's rule: rounded edges, {pool.roi_size} cells, floor/ceil"),
    ]
    for ax, bins, title in panels:
        _grid(ax, size, title)
        _shade_difference(ax, box, [(float(a), float(b)) for a, b in bins])
        for a, b in bins:
            for c, d in bins:
                ax.add_patch(Rectangle((a, c), b - a, d - c, fill=False, ec="tab:green", lw=1.2))
        _true_bins(ax, box, ex.output_size)
    axes[0].set_ylabel("feature cells (y)")
    fig.suptitle(
        f"RoIPool: a {ex.box_size:g} px box at stride {s} = {box:.2f} cells "
        f"(blue, true {ex.output_size}x{ex.output_size} bins dashed); quantized bins green; "
        "lost area red, extra area orange",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_sampling(ex: Example, path: Path) -> None:
    size = math.ceil(ex.image_size / ex.stride)
    box = ex.box_size / ex.stride
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    for ax, ratio in zip(axes, (1, 2), strict=True):
        bins = roi_align_bins(ex, ratio, size)
        g = bins.geometry
        _grid(ax, size, f"RoIAlign, sampling_ratio={ratio}: {g.grid_h * g.grid_w} point(s) per bin")
        _true_bins(ax, box, ex.output_size)
        xs = [v for pts in bins.points for v in pts]
        px, py = np.meshgrid(xs, xs)
        ax.scatter(px, py, s=6, color="tab:red", zorder=4)
        # one point's four neighbours: the first point of the middle bin
        mid = ex.output_size // 2
        y = x = bins.points[mid][0]
        bw = reference.bilinear_weights(y, x, size, size)
        for yy, xx, w in bw.corners():
            ax.add_patch(Rectangle((xx - 0.5, yy - 0.5), 1, 1, color="tab:purple", alpha=0.3))
            ax.annotate(f"{w:.2f}", (xx, yy), fontsize=6, ha="center", va="center")
        ax.scatter([x], [y], s=30, color="black", marker="x", zorder=5)
    axes[0].set_ylabel("feature cells (y)")
    fig.suptitle(
        "RoIAlign keeps real-valued bins; each point (red) is bilinearly interpolated from "
        "its 4 neighbouring cells (purple, with weights; cell centres at integers)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gradient_maps(ex: Example, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Input gradient of one output cell (the middle bin) under roi_pool and roi_align,
    from the ops' own backward on a random feature map."""
    size = math.ceil(ex.image_size / ex.stride)
    x = torch.randn(1, 1, size, size, dtype=torch.float64, generator=torch.manual_seed(seed))
    box = torch.tensor([[0, 0.0, 0.0, ex.box_size, ex.box_size]], dtype=torch.float64)
    mid = ex.output_size // 2
    maps = []
    for op in ("pool", "align"):
        xg = x.clone().requires_grad_()
        if op == "pool":
            out = roi_pool(xg, box, ex.output_size, 1 / ex.stride)
        else:
            out = roi_align(xg, box, ex.output_size, 1 / ex.stride, ex.sampling_ratio)
        one_hot = torch.zeros_like(out)
        one_hot[0, 0, mid, mid] = 1
        out.backward(one_hot)
        maps.append(xg.grad[0, 0].numpy())
    return maps[0], maps[1]


def figure_backward(ex: Example, path: Path) -> None:
    size = math.ceil(ex.image_size / ex.stride)
    pool_grad, align_grad = gradient_maps(ex)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    titles = (
        "RoIPool: the whole gradient goes to the bin's argmax cell",
        f"RoIAlign (sampling_ratio={ex.sampling_ratio}): split by bilinear weights",
    )
    for ax, grad, title in zip(axes, (pool_grad, align_grad), titles, strict=True):
        _grid(ax, size, title)
        ax.imshow(grad, cmap="Greens", extent=(-0.5, size - 0.5, size - 0.5, -0.5), vmin=0)
        for yy, xx in zip(*np.nonzero(grad), strict=True):
            ax.annotate(f"{grad[yy, xx]:.2f}", (xx, yy), fontsize=5, ha="center", va="center")
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
    axes[0].set_ylabel("feature cells (y)")
    mid = ex.output_size // 2
    fig.suptitle(
        f"Backward: input cells that receive the gradient of output bin ({mid}, {mid}) "
        "(cells centred on integer coordinates)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_figures(ex: Example, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "1-roipool-quantization.png", out / "2-roialign-sampling.png",
             out / "3-backward-routing.png"]  # fmt: skip
    figure_quantization(ex, paths[0])
    figure_sampling(ex, paths[1])
    figure_backward(ex, paths[2])
    return paths
