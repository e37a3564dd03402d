"""DistributedDataParallel (2 processes, gloo, CPU) trains a small RoI head to the same
gradients as one process on the concatenated batch (issue 11)."""

import datetime
import os
import socket
import sys

import numba
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import roiops

IMAGES_PER_RANK = 2
ROIS_PER_IMAGE = 24
WORLD = 2


class RoIHead(nn.Module):
    """A learnable feature map per image (as a backbone's output), RoIAlign, and a
    linear scorer. The feature maps' gradients come from roiops' backward alone."""

    def __init__(self, images, channels=6, size=(20, 24)):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = nn.Parameter(torch.randn(images, channels, *size, generator=g))
        self.score = nn.Linear(channels * 7 * 7, 3)
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(3, channels * 7 * 7, generator=g))
            self.score.bias.copy_(torch.randn(3, generator=g))

    def forward(self, image_ids, rois):
        pooled = roiops.roi_align(self.features[image_ids], rois, 7, 0.5, 2, True)
        return self.score(pooled.flatten(1))


def batch(images):
    """Images ``images`` and their RoIs (batch index local to the list), and targets."""
    rois, targets = [], []
    for n, image in enumerate(images):
        gi = torch.Generator().manual_seed(100 + image)
        xy = torch.rand(ROIS_PER_IMAGE, 2, generator=gi) * 40
        wh = torch.rand(ROIS_PER_IMAGE, 2, generator=gi) * 20 + 2
        index = torch.full((ROIS_PER_IMAGE, 1), float(n))
        rois.append(torch.cat([index, xy, xy + wh], 1))
        targets.append(torch.randint(0, 3, (ROIS_PER_IMAGE,), generator=gi))
    return torch.tensor(images), torch.cat(rois), torch.cat(targets)


def all_images():
    return list(range(WORLD * IMAGES_PER_RANK))


def gradients(model, image_ids, rois, targets):
    loss = nn.functional.cross_entropy(model(image_ids, rois), targets)
    loss.backward()
    module = getattr(model, "module", model)
    return {name: p.grad.clone() for name, p in module.named_parameters()}


def _worker(rank, port, path):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    torch.set_num_threads(1)
    numba.set_num_threads(1)  # two processes on two cores
    model = nn.parallel.DistributedDataParallel(RoIHead(len(all_images())))
    mine = all_images()[rank * IMAGES_PER_RANK : (rank + 1) * IMAGES_PER_RANK]
    runs = []
    for _ in range(2):
        model.zero_grad()
        runs.append(gradients(model, *batch(mine)))
    if rank == 0:
        torch.save(runs, path)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip the interpreter's teardown: once, in a full clean-clone run, a worker died of
    # "terminate called without an active exception" (not reproduced in 10 runs since);
    # a native thread pool's destructor at exit is the likely place
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    path = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(_free_port(), str(path)), nprocs=WORLD, join=True)
    first, second = torch.load(path)
    # deterministic: the same DDP step twice gives the same bits
    for name in first:
        assert torch.equal(first[name], second[name]), name
    single = gradients(RoIHead(len(all_images())), *batch(all_images()))
    # The feature maps' gradients are roiops' backward: each rank's image gets exactly
    # the bits one process gives it (the loss scale 1/24 per rank, averaged over 2 ranks,
    # is 1/48 exactly; the other rank adds exact zeros).
    assert torch.equal(first["features"], single["features"])
    assert all(g.abs().sum() > 0 for g in single["features"])  # every image got some
    # The scorer's gradients are torch's sums over RoIs: 2 x 24 rows on 2 ranks, then the
    # all-reduce, against 48 rows in one sum; the same up to float rounding.
    for name in ("score.weight", "score.bias"):
        torch.testing.assert_close(first[name], single[name], rtol=1e-5, atol=1e-6)
