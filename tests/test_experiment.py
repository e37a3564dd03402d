"""roiops experiment: the quick run produces well-formed outputs; the metrics are right."""

import json
import math

import numpy as np
import torch

from roiops import cli, experiment


def test_quick_run_writes_table_json_and_plots(tmp_path, capsys, monkeypatch):
    # the CLI's whole path with fewer steps, images and strides than --quick's (the
    # table's shape, not the training, is under test: every variant and seed still runs)
    tiny = experiment.Settings(strides=(16,), seeds=2, steps=3, batch_size=2, test_images=2)
    monkeypatch.setattr(experiment.Settings, "quick", classmethod(lambda cls: tiny))
    assert cli.main(["experiment", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    settings = experiment.Settings.quick()
    assert len(data["runs"]) == len(experiment.VARIANTS) * len(settings.strides) * settings.seeds
    assert len(data["summary"]) == len(experiment.VARIANTS) * len(settings.strides)
    for row in data["summary"]:
        for bucket in experiment.BUCKETS:
            mean, half = row[f"box AP {bucket}"]
            assert 0.0 <= mean <= 1.0 and half >= 0.0
            assert 0.0 <= row[f"mask IoU {bucket}"][0] <= 1.0
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") == 1 + len(data["summary"])  # header + one row each
    for name in ("box_ap_by_size.png", "mask_iou_by_size.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "RoIPool" in capsys.readouterr().out


def test_average_precision_by_hand():
    gt = (torch.tensor([[10.0, 10, 18, 18], [40, 40, 70, 70]]), torch.tensor([0, 2]))
    perfect = (gt[0].clone(), torch.tensor([0.9, 0.8]))
    assert experiment.average_precision([perfect], [gt], 0) == 1.0
    assert experiment.average_precision([perfect], [gt], 2) == 1.0
    assert math.isnan(experiment.average_precision([perfect], [gt], 1))  # no medium object
    missed = (torch.zeros(0, 4), torch.zeros(0))
    assert experiment.average_precision([missed], [gt], 0) == 0.0
    # a shifted box (IoU 0.6 with the small object) counts at IoU .5 and .55 only
    shifted = (torch.tensor([[11.0, 10, 19, 18]]) * 1.0, torch.tensor([0.9]))
    iou = float(experiment.box_iou(shifted[0], gt[0][:1]))
    expected = sum(t <= iou for t in np.arange(0.5, 0.96, 0.05)) / 10
    assert abs(experiment.average_precision([shifted], [gt], 0) - expected) < 1e-9


def test_mean_ci_uses_student_t():
    mean, half = experiment.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and abs(half - 4.303 * 1.0 / math.sqrt(3)) < 1e-9


def test_mask_targets_crop_the_ground_truth():
    masks = torch.zeros(1, 96, 96)
    masks[0, 20:40, 30:50] = 1
    inside = experiment.mask_targets(torch.tensor([[0, 30.0, 20, 50, 40]]), masks)
    # pixel centres: the outermost samples straddle the mask's edge, still above 0.5
    assert inside.shape == (1, 28, 28) and bool((inside >= 0.5).all())
    assert bool((inside[0, 2:-2, 2:-2] == 1).all())
    outside = experiment.mask_targets(torch.tensor([[0, 60.0, 60, 80, 80]]), masks)
    assert bool((outside == 0).all())


def test_boxes_bound_the_visible_masks():
    for seed in range(5):
        image, boxes, masks, buckets = experiment.make_image(np.random.default_rng(seed))
        assert image.shape == (1, 96, 96) and len(boxes) == len(masks) == len(buckets) >= 1
        assert set(buckets.tolist()) <= {0, 1, 2}
        for box, mask in zip(boxes.tolist(), masks, strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    # the generated sizes span the three buckets
    _, boxes, _, buckets = experiment.make_image(np.random.default_rng(0))
    assert sorted(buckets.tolist()) == [0, 1, 2]
