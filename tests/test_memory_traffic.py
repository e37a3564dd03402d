"""benchmarks/memory_traffic.py's model: the cells and sectors it counts, by pencil."""

import numpy as np
from conftest import load_benchmark


def load():
    return load_benchmark("memory_traffic")


def test_cells_and_sectors_of_one_roi():
    model = load()
    roi = np.array([0, 0.0, 0.0, 4.0, 4.0])
    # aligned, 2x2 bins of one point: points at -0.5 + 1 and + 3 = 0.5 and 2.5 on each
    # axis, reading rows and columns 0-3
    cells = model.roi_align_cells(roi, 1.0, 2, 1, True, 10, 16)
    assert cells == {(y, x) for y in range(4) for x in range(4)}
    # 4 float32 cells of a row share a 32-byte sector; a row of 16 cells is 2 sectors
    assert model.sectors(cells, 16, 4) == {(y, 0) for y in range(4)}
    assert model.sectors({(0, 7), (0, 8)}, 16, 4) == {(0, 0), (0, 1)}
    # roi_pool: the box quantized to cells 0-4 (inclusive), bins overlapping by a cell
    assert model.roi_pool_cells(roi, 1.0, 2, 10, 16) == {(y, x) for y in range(5) for x in range(5)}


def test_rois_innermost_fetches_each_sector_once():
    from roiops import bench

    model = load()
    case = bench.Case("tiny", "roi_pool", (1, 2, 8, 16), 6, (8, 30), spatial_scale=1 / 4,
                      output_size=2)  # fmt: skip
    t = model.case_traffic(case)
    # no more than the map, and no more than RoI-major, which reads overlaps again
    assert 0 < t["rois_inner_bytes"] <= min(t["map_bytes"], t["rois_major_bytes"])
    assert t["scatter_rois_major_bytes"] == 0  # (roi_align's scatter only)
    t = model.case_traffic(bench.Case("tiny", "roi_align", (1, 2, 8, 16), 6, (8, 30),
                                      spatial_scale=1 / 4, output_size=2))  # fmt: skip
    # each cell's 2 channels' int64 sums, read and written back: 32 bytes a cell at most
    assert 0 < t["scatter_once_bytes"] <= min(8 * 16 * 32, t["scatter_rois_major_bytes"])
