"""``roiops warmup``: after it, the ops as models call them need no kernel compiled.

Checked in a fresh process (this one has compiled everything the other tests needed):
every Numba entry point's compiled signatures are listed after ``warm_up``, then again
after a model has called every op in other shapes, RoI counts and layouts; nothing may
be new. (Loading a kernel from Numba's disk cache adds its signature too, so the check
does not depend on the state of the cache.)
"""

import json
import os
import pathlib
import subprocess
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = """
import importlib, json, pkgutil, sys
import torch
from numba.core.registry import CPUDispatcher
import roiops, roiops.cpu
from roiops.warmup import warm_up
from test_integration import EveryOp, every_op_inputs

def compiled():
    seen = set()
    for m in pkgutil.iter_modules(roiops.cpu.__path__):
        for name, obj in vars(importlib.import_module("roiops.cpu." + m.name)).items():
            if isinstance(obj, CPUDispatcher):
                seen |= {f"{m.name}.{name}{sig}" for sig in obj.signatures}
    return seen

reported = []
warm_up([torch.float32], lambda what, seconds: reported.append(what))
before = compiled()
for k, layout in ((11, torch.contiguous_format), (5, torch.channels_last)):
    x, rois, boxes, rotated, pyramid, shapes = every_op_inputs(k, seed=k)
    x = x.contiguous(memory_format=layout).requires_grad_()
    pyramid = {n: v.contiguous(memory_format=layout) for n, v in pyramid.items()}
    rois.requires_grad_()
    out = EveryOp()(x, rois, boxes, rotated, pyramid, shapes)
    torch.autograd.grad(out.sum(), [x, rois])
# a map whose NCHW planes are 4 KiB multiples (the CPU kernels' own transpose)
big = torch.randn(1, 16, 32, 64, requires_grad=True)
roiops.roi_align(big, torch.tensor([[0.0, 1, 1, 30, 20]]), 7, 1.0, 2, True).sum().backward()
from roiops.cpu import parallel
twins = sum(bool(t.signatures) for t in parallel._TWINS.values())
print(json.dumps({"reported": reported, "before": len(before), "twins": twins,
                  "new": sorted(compiled() - before)}))
"""


def test_nothing_left_to_compile_after_warm_up():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
               ROIOPS_BACKEND="numba")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["reported"]) == len(set(result["reported"])) == 2 * 36
    assert "ps_roi_pool float32 channels_last" in result["reported"]
    assert "ps_roi_pool float32 channels_last serial" in result["reported"]
    assert result["twins"] >= 20  # (the serial twins compiled, the kernels back after)
    assert result["before"] >= 20  # the entry points of every op
    assert result["new"] == []


def test_warmup_command(capsys, monkeypatch):
    from roiops import cli, warmup

    calls = []

    def fake(dtypes, report, serial):
        calls.append((list(dtypes), serial))
        report("roi_align avg float64 NCHW", 0.5)
        return 0.5

    monkeypatch.setattr(warmup, "warm_up", fake)
    assert cli.main(["warmup", "--dtype", "float64"]) == 0
    assert cli.main(["warmup", "--dtype", "float32", "--no-serial"]) == 0
    assert calls == [([torch.float64], True), ([torch.float32], False)]
    assert "roi_align avg float64 NCHW" in capsys.readouterr().out
