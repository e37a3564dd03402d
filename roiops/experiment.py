"""``roiops experiment``: RoIPool vs RoIAlign by object size, on synthetic data.

A small, honest study of the direction of the article's (and Mask R-CNN's Table 2c/2d)
claims, with nothing to download:

* data: grey images with filled ellipses and rectangles of controlled sizes (small,
  medium, large) on a textured background, with their boxes and masks (fixed seeds);
* model: a small CNN backbone of selectable stride (8, 16, 32) and a second-stage RoI
  head that scores proposals, refines their boxes and predicts a 28x28 mask, fed by the
  pooling variant under study; proposals are jittered ground-truth boxes and random
  background boxes (the RPN is not part of the question);
* metrics: COCO-style box AP at IoU .5:.95 and mask IoU, per object-size bucket; mean
  and 95% confidence interval over seeds.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from roiops.functional import roi_align, roi_pool

BUCKETS = {"small": (6, 12), "medium": (12, 24), "large": (24, 48)}  # object side, px
IMAGE = 96
MASK = 28


@dataclass(frozen=True)
class Variant:
    name: str
    op: str  # "pool" or "align"
    sampling_ratio: int = 2
    aligned: bool = True
    mode: str = "avg"

    def __call__(self, features: Tensor, rois: Tensor, size: int, scale: float) -> Tensor:
        if self.op == "pool":
            return roi_pool(features, rois, size, scale)
        return roi_align(features, rois, size, scale, self.sampling_ratio, self.aligned, self.mode)


VARIANTS = [
    Variant("RoIPool", "pool"),
    Variant("RoIAlign 1 pt", "align", 1),
    Variant("RoIAlign 4 pts", "align", 2),
    Variant("RoIAlign adaptive", "align", 0),
    Variant("RoIAlign max 4 pts", "align", 2, mode="max"),
    Variant("RoIAlign 4 pts, aligned=False", "align", 2, aligned=False),
]


# ------------------------------------------------------------------------------- data
def make_image(rng: np.random.Generator, objects: int = 3):
    """(image [1, H, W], boxes [n, 4], masks [n, H, W], bucket index per object)."""
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE] + 0.5
    freq = rng.uniform(0.05, 0.3, 2)
    image = 0.3 * np.sin(xx * freq[0] + rng.uniform(0, 6)) * np.cos(yy * freq[1])
    image += rng.normal(0, 0.3, (IMAGE, IMAGE))
    shapes, buckets = [], []
    for i in range(objects):
        b = i % len(BUCKETS)
        lo, hi = list(BUCKETS.values())[b]
        w, h = rng.uniform(lo, hi, 2)
        x0, y0 = rng.uniform(0, IMAGE - w), rng.uniform(0, IMAGE - h)
        if rng.random() < 0.5:  # ellipse
            m = ((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 <= 1
        else:  # rectangle
            m = (xx >= x0) & (xx <= x0 + w) & (yy >= y0) & (yy <= y0 + h)
        image[m] = rng.uniform(1.0, 2.0) * rng.choice([-1, 1])
        shapes.append(m)
        buckets.append(b)
    # objects painted later occlude earlier ones: masks and boxes are of the visible part
    # (as COCO's), and an object hidden entirely is no object
    boxes, masks, kept = [], [], []
    for i, m in enumerate(shapes):
        visible = m & ~np.any(shapes[i + 1 :], axis=0) if i + 1 < len(shapes) else m
        if not visible.any():
            continue
        ys, xs = np.nonzero(visible)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        masks.append(visible)
        kept.append(buckets[i])
    return (
        torch.tensor(image, dtype=torch.float32)[None],
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(np.stack(masks), dtype=torch.float32),
        torch.tensor(kept),
    )


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def make_proposals(rng: np.random.Generator, boxes: Tensor, per_object: int = 3,
                   background: int = 4) -> Tensor:  # fmt: skip
    """Jittered ground-truth boxes (as a first stage would propose) and random boxes."""
    out = []
    for b in boxes.tolist():
        w, h = b[2] - b[0], b[3] - b[1]
        for _ in range(per_object):
            dx, dy = rng.normal(0, 0.12, 2) * (w, h)
            sw, sh = np.exp(rng.normal(0, 0.12, 2))
            cx, cy = (b[0] + b[2]) / 2 + dx, (b[1] + b[3]) / 2 + dy
            out.append([cx - w * sw / 2, cy - h * sh / 2, cx + w * sw / 2, cy + h * sh / 2])
    for _ in range(background):
        w, h = rng.uniform(6, 48, 2)
        x0, y0 = rng.uniform(0, IMAGE - w), rng.uniform(0, IMAGE - h)
        out.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(out, dtype=torch.float32).clamp(0, IMAGE)


# ------------------------------------------------------------------------------ model
class Detector(nn.Module):
    """Backbone of the given stride + RoI head (score, box deltas, 28x28 mask)."""

    def __init__(self, stride: int, variant: Variant, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
        for _ in range(int(math.log2(stride))):
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU()]
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.backbone = nn.Sequential(*layers)
        self.scale = 1.0 / stride
        self.variant = variant
        self.box_head = nn.Sequential(
            nn.Flatten(), nn.Linear(width * 49, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU()
        )
        self.score = nn.Linear(256, 1)
        self.deltas = nn.Linear(256, 4)
        self.mask_head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, 16, 2, stride=2), nn.ReLU(),
            nn.Conv2d(16, 1, 1),
        )  # fmt: skip

    def forward(self, images: Tensor, rois: Tensor, mask_rois: Tensor | None = None):
        """(scores, box deltas) of ``rois`` and 28x28 mask logits of ``mask_rois``
        (default: the same RoIs; training passes the positives only, as Mask R-CNN)."""
        features = self.backbone(images)
        h = self.box_head(self.variant(features, rois, 7, self.scale))
        mask_rois = rois if mask_rois is None else mask_rois
        masks = self.mask_head(self.variant(features, mask_rois, MASK // 2, self.scale))
        return self.score(h)[:, 0], self.deltas(h), masks[:, 0]


def encode(proposals: Tensor, targets: Tensor) -> Tensor:
    """Box deltas (dx, dy, dw, dh) of Fast R-CNN."""
    pw, ph = (proposals[:, 2:] - proposals[:, :2]).unbind(1)
    px, py = ((proposals[:, 2:] + proposals[:, :2]) / 2).unbind(1)
    tw, th = (targets[:, 2:] - targets[:, :2]).unbind(1)
    tx, ty = ((targets[:, 2:] + targets[:, :2]) / 2).unbind(1)
    return torch.stack([(tx - px) / pw, (ty - py) / ph, torch.log(tw / pw), torch.log(th / ph)], 1)


def decode(proposals: Tensor, deltas: Tensor) -> Tensor:
    pw, ph = (proposals[:, 2:] - proposals[:, :2]).unbind(1)
    px, py = ((proposals[:, 2:] + proposals[:, :2]) / 2).unbind(1)
    cx, cy = px + deltas[:, 0] * pw, py + deltas[:, 1] * ph
    w, h = pw * deltas[:, 2].clamp(max=4).exp(), ph * deltas[:, 3].clamp(max=4).exp()
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def batch(rng: np.random.Generator, size: int):
    images, rois, targets = [], [], []
    for i in range(size):
        image, boxes, masks, buckets = make_image(rng)
        proposals = make_proposals(rng, boxes)
        images.append(image)
        rois.append(torch.cat([torch.full((len(proposals), 1), float(i)), proposals], 1))
        targets.append((boxes, masks, buckets))
    return torch.stack(images), torch.cat(rois), targets


def match(rois: Tensor, targets):
    """Per RoI: matched ground truth box and mask (IoU >= 0.5) or None."""
    labels, gt_boxes, gt_masks, gt_buckets = [], [], [], []
    for i, (boxes, masks, buckets) in enumerate(targets):
        r = rois[rois[:, 0] == i, 1:]
        iou = box_iou(r, boxes)
        best, idx = iou.max(1)
        labels.append(best >= 0.5)
        gt_boxes.append(boxes[idx])
        gt_masks.append(masks[idx])
        gt_buckets.append(buckets[idx])
    return torch.cat(labels), torch.cat(gt_boxes), torch.cat(gt_masks), torch.cat(gt_buckets)


def mask_targets(rois: Tensor, gt_masks: Tensor) -> Tensor:
    """Each matched ground-truth mask cropped to its RoI at 28x28 (as Mask R-CNN does)."""
    boxes = torch.cat([torch.arange(len(rois), dtype=torch.float32)[:, None], rois[:, 1:]], 1)
    return roi_align(gt_masks[:, None], boxes, MASK, 1.0, 2, True)[:, 0]


def train(model: Detector, batches: list, progress=None) -> None:
    """Adam over pre-generated ``batches``: score (BCE), box deltas (smooth L1) and masks
    (BCE against the ground truth cropped to each positive RoI), positives at IoU >= 0.5."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for images, rois, targets in batches:
        labels, gt_boxes, gt_masks, _ = match(rois, targets)
        pos = labels
        device = next(model.parameters()).device
        score, deltas, masks = (
            t.cpu() for t in model(images.to(device), rois.to(device), rois[pos].to(device))
        )
        loss = F.binary_cross_entropy_with_logits(score, labels.float())
        if pos.any():
            box_targets = encode(rois[pos, 1:], gt_boxes[pos])
            loss = loss + F.smooth_l1_loss(deltas[pos], box_targets, beta=1 / 9)
            target = (mask_targets(rois[pos], gt_masks[pos]) >= 0.5).float()
            loss = loss + F.binary_cross_entropy_with_logits(masks, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress.update()


# ---------------------------------------------------------------------------- metrics
def nms(boxes: Tensor, scores: Tensor, threshold: float = 0.5) -> Tensor:
    order = scores.argsort(descending=True)
    keep = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        if len(order) == 1:
            break
        iou = box_iou(boxes[i][None], boxes[order[1:]])[0]
        order = order[1:][iou < threshold]
    return torch.tensor(keep, dtype=torch.long)


def average_precision(dets, gts, bucket: int) -> float:
    """COCO-style AP at IoU .5:.95 (101-point interpolation) for one size bucket.

    dets: per image (boxes, scores); gts: per image (boxes, buckets). Ground truth of
    other buckets is ignored, and so are detections matched to it or, unmatched, whose
    size falls outside the bucket (COCO's area-range rule, by box side here)."""
    lo, hi = list(BUCKETS.values())[bucket]
    n_gt = sum(int((b == bucket).sum()) for _, b in gts)
    if n_gt == 0:
        return float("nan")
    aps = []
    for t in np.arange(0.5, 0.96, 0.05):
        records = []  # (score, true positive)
        for (boxes, scores), (gt_boxes, gt_buckets) in zip(dets, gts, strict=True):
            taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
            iou = box_iou(boxes, gt_boxes) if len(gt_boxes) else torch.zeros(len(boxes), 0)
            for d in scores.argsort(descending=True).tolist():
                candidates = (iou[d] >= t) & ~taken
                if candidates.any():
                    g = int(torch.where(candidates, iou[d], -1).argmax())
                    taken[g] = True
                    if gt_buckets[g] == bucket:
                        records.append((float(scores[d]), True))
                    continue
                side = float((boxes[d, 2:] - boxes[d, :2]).prod().sqrt())
                if lo <= side < hi:
                    records.append((float(scores[d]), False))
        records.sort(key=lambda r: -r[0])
        tp = np.cumsum([r[1] for r in records]) if records else np.zeros(0)
        fp = np.cumsum([not r[1] for r in records]) if records else np.zeros(0)
        recall = tp / n_gt
        precision = tp / np.maximum(tp + fp, 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        samples = [
            precision[np.searchsorted(recall, r, side="left")] if (recall >= r).any() else 0.0
            for r in np.linspace(0, 1, 101)
        ]
        aps.append(float(np.mean(samples)))
    return float(np.mean(aps))


def paste_mask(mask_logits: Tensor, box: Tensor) -> Tensor:
    """A 28x28 mask prediction pasted into its box at image resolution (0/1)."""
    canvas = torch.zeros(IMAGE, IMAGE)
    x0, y0 = (int(math.floor(v)) for v in box[:2].clamp(0, IMAGE - 1).tolist())
    x1, y1 = (int(math.ceil(v)) for v in box[2:].clamp(1, IMAGE).tolist())
    if x1 <= x0 or y1 <= y0:
        return canvas
    m = F.interpolate(mask_logits[None, None], size=(y1 - y0, x1 - x0), mode="bilinear")
    canvas[y0:y1, x0:x1] = (m[0, 0] > 0).float()
    return canvas


@torch.no_grad()
def evaluate(model: Detector, rng: np.random.Generator, images: int) -> dict:
    model.eval()
    dets, gts = [], []
    mask_ious = {b: [] for b in range(len(BUCKETS))}
    for _ in range(images):
        image, boxes, masks, buckets = make_image(rng)
        proposals = make_proposals(rng, boxes)
        rois = torch.cat([torch.zeros(len(proposals), 1), proposals], 1)
        device = next(model.parameters()).device
        score, deltas, mask_logits = (
            t.cpu() for t in model(image[None].to(device), rois.to(device))
        )
        refined = decode(proposals, deltas).clamp(0, IMAGE)
        keep = nms(refined, score)
        dets.append((refined[keep], score[keep].sigmoid()))
        gts.append((boxes, buckets))
        # mask quality of the kept detection that best matches each object
        iou = box_iou(refined[keep], boxes)
        for g in range(len(boxes)):
            if len(keep) and iou[:, g].max() >= 0.5:
                d = keep[int(iou[:, g].argmax())]
                pasted = paste_mask(mask_logits[d], refined[d])
                inter = (pasted * masks[g]).sum()
                union = ((pasted + masks[g]) > 0).float().sum()
                mask_ious[int(buckets[g])].append(float(inter / union.clamp(min=1)))
            else:
                mask_ious[int(buckets[g])].append(0.0)
    model.train()
    names = list(BUCKETS)
    result = {f"box AP {names[b]}": average_precision(dets, gts, b) for b in range(len(names))}
    result |= {f"mask IoU {names[b]}": float(np.mean(v)) for b, v in mask_ious.items()}
    return result


# ------------------------------------------------------------------------------ study
T_975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
}  # fmt: skip  (Student t, 97.5% quantile, by degrees of freedom)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (Student t)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), float("nan")
    half = T_975.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)


@dataclass(frozen=True)
class Settings:
    strides: tuple[int, ...] = (8, 16, 32)
    seeds: int = 3
    steps: int = 200
    batch_size: int = 8
    test_images: int = 60

    @classmethod
    def quick(cls) -> Settings:
        return cls(strides=(16, 32), seeds=2, steps=15, batch_size=4, test_images=6)


def run_study(settings: Settings, out_dir: str | Path, variants=VARIANTS, device=None) -> dict:
    """Train and evaluate every (stride, variant, seed); write results.md/json and plots.

    Runs on the GPU when there is one (``device`` overrides); data and metrics stay on
    the CPU."""
    from tqdm import tqdm

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = len(variants) * len(settings.strides) * settings.seeds
    bar = tqdm(total=runs * settings.steps, desc="training", unit="step")
    raw = []
    started = time.time()
    # the same data for every variant and stride of a seed: a paired comparison
    data = {
        seed: [batch(rng, settings.batch_size) for _ in range(settings.steps)]
        for seed in range(settings.seeds)
        for rng in [np.random.default_rng(seed)]
    }
    for stride in settings.strides:
        for variant in variants:
            for seed in range(settings.seeds):
                torch.manual_seed(seed)
                model = Detector(stride, variant).to(device)
                train(model, data[seed], bar)
                metrics = evaluate(
                    model, np.random.default_rng(10_000 + seed), settings.test_images
                )
                raw.append({"stride": stride, "variant": variant.name, "seed": seed, **metrics})
    bar.close()
    summary = summarize(raw)
    result = {
        "settings": asdict(settings),
        "variants": [asdict(v) for v in variants],
        "seconds": time.time() - started,
        "device": str(device),
        "runs": raw,
        "summary": summary,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    (out / "results.md").write_text(results_markdown(result))
    plot(result, out)
    return result


def summarize(raw: list[dict]) -> list[dict]:
    metrics = [k for k in raw[0] if k not in ("stride", "variant", "seed")]
    rows = []
    for stride in dict.fromkeys(r["stride"] for r in raw):
        for variant in dict.fromkeys(r["variant"] for r in raw):
            sel = [r for r in raw if r["stride"] == stride and r["variant"] == variant]
            row = {"stride": stride, "variant": variant, "seeds": len(sel)}
            for m in metrics:
                row[m] = mean_ci([r[m] for r in sel])
            rows.append(row)
    return rows


def results_markdown(result: dict) -> str:
    s = result["settings"]
    metrics = [k for k in result["summary"][0] if k not in ("stride", "variant", "seeds")]
    lines = [
        "# roiops experiment: RoIPool vs RoIAlign by object size",
        "",
        f"{s['seeds']} seeds x {s['steps']} steps of batch {s['batch_size']}, "
        f"{s['test_images']} test images per seed, {result['seconds'] / 60:.1f} min on "
        f"{result.get('device', 'cpu')}. "
        "Mean +- 95% CI half-width (Student t over seeds), in %.",
        "",
        "| stride | variant | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for row in result["summary"]:
        cells = [f"{100 * m:.1f} +- {100 * h:.1f}" for m, h in (row[k] for k in metrics)]
        lines.append(f"| {row['stride']} | {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(BUCKETS)
    for metric in ("box AP", "mask IoU"):
        strides = list(dict.fromkeys(r["stride"] for r in result["summary"]))
        fig, axes = plt.subplots(1, len(strides), figsize=(4.5 * len(strides), 4), squeeze=False)
        for ax, stride in zip(axes[0], strides, strict=True):
            rows = [r for r in result["summary"] if r["stride"] == stride]
            for i, row in enumerate(rows):
                means = [100 * row[f"{metric} {n}"][0] for n in names]
                errs = [100 * np.nan_to_num(row[f"{metric} {n}"][1]) for n in names]
                x = np.arange(len(names)) + (i - len(rows) / 2) * 0.12
                ax.errorbar(x, means, yerr=errs, fmt="o", ms=4, capsize=2, label=row["variant"])
            ax.set_xticks(range(len(names)), names)
            ax.set_title(f"stride {stride}")
            ax.set_ylabel(f"{metric} (%)")
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{metric.replace(' ', '_').lower()}_by_size.png", dpi=110)
        plt.close(fig)
