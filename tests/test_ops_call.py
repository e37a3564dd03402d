"""The public functions call an op's implementation directly (``roiops.ops.call``) only
where nothing could tell the difference from calling the custom op: plain eager tensors
that autograd will not record, and nothing that acts inside torch's dispatcher."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import roiops
from roiops import ops
from roiops.ops.roi_align import roi_align_op

X = torch.randn(2, 3, 8, 8)
ROIS = torch.tensor([[0, 1.0, 1, 6, 6], [1, 0.0, 0, 4, 4]])
ARGS = (X, ROIS, 1.0, 2, 2, 2, True)


class OpLog(TorchDispatchMode):
    """Records the name of every op that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def inside(context_manager, fn):
    with context_manager:
        return fn()


def test_plain_eager_calls_are_dispatcher_free():
    assert ops.dispatcher_free(ARGS)
    assert ops.dispatcher_free(([X, X], ROIS, torch.zeros(2, dtype=torch.int64), [0.5, 0.25], 2))
    leaf = X.clone().requires_grad_()
    with torch.no_grad():
        assert ops.dispatcher_free((leaf, ROIS))
    with torch.inference_mode():
        assert ops.dispatcher_free(ARGS)


@pytest.mark.parametrize(
    "case",
    [
        "input requires grad",
        "boxes require grad",
        "a pyramid level requires grad",
        "parameter",
        "meta tensor",
        "a meta pyramid level",
        "dispatch mode",
        "function mode",
        "profiler",
    ],
)
def test_what_needs_the_dispatcher(case):
    grad = X.clone().requires_grad_()
    checks = {
        "input requires grad": lambda: ops.dispatcher_free((grad, ROIS)),
        "boxes require grad": lambda: ops.dispatcher_free((X, ROIS.clone().requires_grad_())),
        "a pyramid level requires grad": lambda: ops.dispatcher_free(([X, grad], ROIS)),
        "parameter": lambda: ops.dispatcher_free((torch.nn.Parameter(X, False), ROIS)),
        "meta tensor": lambda: ops.dispatcher_free((X.to("meta"), ROIS.to("meta"))),
        "a meta pyramid level": lambda: ops.dispatcher_free(([X, X.to("meta")], ROIS)),
        "dispatch mode": lambda: inside(OpLog(), lambda: ops.dispatcher_free(ARGS)),
        "function mode": lambda: inside(torch.device("cpu"), lambda: ops.dispatcher_free(ARGS)),
        "profiler": lambda: inside(torch.profiler.profile(), lambda: ops.dispatcher_free(ARGS)),
    }
    assert checks[case]() is False


def test_transforms_and_tracing_need_the_dispatcher():
    seen = []

    def probe(x):
        seen.append(ops.dispatcher_free((x,)))
        return x * 2

    torch.vmap(probe)(torch.randn(3, 2))
    torch.jit.trace(probe, torch.randn(3), check_trace=False)
    torch.compile(probe, backend="eager", fullgraph=True)(torch.randn(4))
    assert seen == [False, False, False]


def test_the_direct_call_is_taken_only_where_it_is_free(monkeypatch):
    calls = []
    real = ops._IMPLEMENTATIONS[roi_align_op]

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setitem(ops._IMPLEMENTATIONS, roi_align_op, counted)
    direct = roiops.roi_align(X, ROIS, 2, 1.0, 2, True)
    assert len(calls) == 1
    leaf = X.clone().requires_grad_()
    with torch.profiler.profile():  # the profiler sees the op
        through_op = roiops.roi_align(leaf, ROIS, 2, 1.0, 2, True)
    assert len(calls) == 1 and through_op.grad_fn is not None
    assert torch.equal(direct, through_op.detach())


def test_recorded_eager_calls_skip_the_dispatcher():
    leaf = X.clone().requires_grad_()
    assert ops.eager((leaf, ROIS)) == ops.RECORDED
    assert ops.eager(([X, leaf], ROIS)) is None  # autograd sees no tensor in a list
    with OpLog() as log:  # (the mode itself makes the call go through the op)
        assert ops.eager((leaf, ROIS)) is None
    assert not log.names


@pytest.mark.parametrize("op", ["roi_align", "max", "roi_pool", "ps_roi_align", "ps_roi_pool",
                                "prroi_pool", "roi_align_rotated"])  # fmt: skip
def test_recorded_eager_calls_give_the_ops_gradients(op):
    # an eager call that autograd records runs the implementation under the op's own
    # formulas (an autograd.Function): the same output and gradients, for the input and
    # the boxes, as the custom op through the dispatcher (a dispatch mode forces that)
    x = torch.randn(2, 8, 8, 8)
    rois = ROIS.clone()
    rotated = torch.tensor([[0, 4.0, 4, 5, 3, 30], [1, 3.0, 3, 4, 4, -15]])

    def run(fn):
        leaf = x.clone().requires_grad_()
        boxes = (rotated if op == "roi_align_rotated" else rois).clone().requires_grad_()
        boxes.requires_grad_(op in ("roi_align", "max", "prroi_pool"))
        out = fn(leaf, boxes)
        out.backward(torch.ones_like(out))
        return out.detach(), leaf.grad, boxes.grad, type(out.grad_fn).__name__

    fns = {
        "roi_align": lambda t, b: roiops.roi_align(t, b, 2, 1.0, 2, True),
        "max": lambda t, b: roiops.roi_align(t, b, 2, 1.0, 2, True, "max"),
        "roi_pool": lambda t, b: roiops.roi_pool(t, b, 2, 1.0),
        "ps_roi_align": lambda t, b: roiops.ps_roi_align(t, b, 2, 1.0, 2),
        "ps_roi_pool": lambda t, b: roiops.ps_roi_pool(t, b, 2, 1.0),
        "prroi_pool": lambda t, b: roiops.prroi_pool(t, b, 2, 1.0),
        "roi_align_rotated": lambda t, b: roiops.roi_align_rotated(t, b, 2, 1.0, 2, True),
    }
    eager = run(fns[op])
    with OpLog():
        through_op = run(fns[op])
    assert eager[3].endswith("_eagerBackward")
    assert not through_op[3].endswith("_eagerBackward")
    for got, want in zip(eager[:3], through_op[:3], strict=True):
        assert (got is None and want is None) or torch.equal(got, want)


def test_calls_through_torch_ops_take_roiops_autograd_kernel():
    # through torch.ops, CPU and CUDA tensors reach roiops's autograd kernel
    # (ops._autograd_kernel): a call autograd records runs under the op's formulas as an
    # eager public call does; a pyramid's features (a list, which an autograd.Function
    # does not see) take the custom op's own Function; under a dispatch mode, the op's
    # own kernel (the mode sees the op); the same outputs and gradients every way
    leaf = X.clone().requires_grad_()
    boxes = ROIS.clone().requires_grad_()
    plain = torch.ops.roiops.roi_align(X, ROIS, 1.0, 2, 2, 2, True)
    out = torch.ops.roiops.roi_align(leaf, boxes, 1.0, 2, 2, 2, True)
    assert type(out.grad_fn).__name__ == "roi_align_eagerBackward"
    out.backward(torch.ones_like(out))
    with OpLog() as log:
        leaf_op, boxes_op = X.clone().requires_grad_(), ROIS.clone().requires_grad_()
        through_op = torch.ops.roiops.roi_align(leaf_op, boxes_op, 1.0, 2, 2, 2, True)
        through_op.backward(torch.ones_like(through_op))
    assert "roiops.roi_align.default" in log.names
    assert not type(through_op.grad_fn).__name__.endswith("_eagerBackward")
    assert torch.equal(plain, out.detach()) and torch.equal(out.detach(), through_op.detach())
    assert torch.equal(leaf.grad, leaf_op.grad) and torch.equal(boxes.grad, boxes_op.grad)

    levels = torch.tensor([0, 1])
    fine, coarse = X.clone().requires_grad_(), X[:, :, :4, :4].clone().requires_grad_()
    pooled = torch.ops.roiops.multi_scale_roi_align([fine, coarse], ROIS, levels, [1.0, 0.5],
                                                    2, 2, 2, True)  # fmt: skip
    pooled.backward(torch.ones_like(pooled))
    assert fine.grad.abs().sum() > 0 and coarse.grad.abs().sum() > 0
    with OpLog():
        fine_op, coarse_op = fine.detach().clone(), coarse.detach().clone()
        fine_op.requires_grad_(), coarse_op.requires_grad_()
        pooled_op = torch.ops.roiops.multi_scale_roi_align(
            [fine_op, coarse_op], ROIS, levels, [1.0, 0.5], 2, 2, 2, True
        )
        pooled_op.backward(torch.ones_like(pooled_op))
    assert torch.equal(pooled.detach(), pooled_op.detach())
    assert torch.equal(fine.grad, fine_op.grad) and torch.equal(coarse.grad, coarse_op.grad)


def test_dispatch_modes_and_the_profiler_still_see_the_ops():
    log = OpLog()
    with log:
        roiops.roi_align(X, ROIS, 2, 1.0, 2, True)
        roiops.roi_pool(X, ROIS, 2, 1.0)
    assert "roiops.roi_align.default" in log.names
    assert "roiops.roi_pool_inference.default" in log.names
    with torch.profiler.profile() as profile:
        roiops.roi_align(X, ROIS, 2, 1.0, 2, True)
    assert "roiops::roi_align" in {event.key for event in profile.key_averages()}


def test_every_public_forward_goes_through_call():
    """Each forward custom op of a public function is registered for the direct call, and
    so is each backward op that the forwards' autograd formulas call."""
    forwards = (
        "roi_align", "roi_align_max", "roi_align_onnx_max", "roi_pool", "roi_pool_inference",
        "ps_roi_align", "ps_roi_pool", "multi_scale_roi_align", "multi_scale_roi_pool",
        "multi_scale_roi_align_rotated", "roi_align_rotated", "prroi_pool", "deform_roi_pool",
        "deform_ps_roi_pool", "bezier_align", "riroi_align_rotated", "turn_orientations",
        "roi_point_sample", "crop_and_resize",
    )  # fmt: skip
    backwards = (
        "roi_align_backward", "roi_align_box_backward", "roi_pool_backward",
        "ps_roi_align_backward", "ps_roi_pool_backward", "multi_scale_roi_align_backward",
        "multi_scale_roi_pool_backward", "multi_scale_roi_align_rotated_backward",
        "roi_align_rotated_backward", "prroi_pool_backward", "prroi_pool_box_backward",
        "deform_roi_pool_backward", "deform_roi_pool_offset_backward", "bezier_align_backward",
        "riroi_align_rotated_backward", "turn_orientations_backward",
        "roi_point_sample_backward", "deform_ps_roi_pool_backward",
        "deform_ps_roi_pool_offset_backward", "crop_and_resize_backward",
        "crop_and_resize_box_backward",
    )  # fmt: skip
    assert {op._qualname for op in ops._FORWARD_OPS} == {f"roiops::{n}" for n in forwards}
    names = {op._qualname for op in ops._IMPLEMENTATIONS}
    assert names == {f"roiops::{n}" for n in forwards + backwards}


def test_backward_formulas_call_the_backward_ops_directly_where_it_is_free(monkeypatch):
    # autograd's backward of an eager call runs the backward op's implementation directly
    # (roiops.ops.call: ~30 us less host time a call on this project's VM, kernels not
    # launched); under the profiler (or a dispatch mode, or torch.compile) through the op,
    # which they then see; the same gradient either way
    from roiops.ops.roi_align import roi_align_backward_op

    calls = []
    real = ops._IMPLEMENTATIONS[roi_align_backward_op]

    def counted(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setitem(ops._IMPLEMENTATIONS, roi_align_backward_op, counted)
    leaf = X.clone().requires_grad_()
    roiops.roi_align(leaf, ROIS, 2, 1.0, 2, True).sum().backward()
    assert len(calls) == 1
    profiled = X.clone().requires_grad_()
    with torch.profiler.profile() as profile:
        roiops.roi_align(profiled, ROIS, 2, 1.0, 2, True).sum().backward()
    assert len(calls) == 1
    assert "roiops::roi_align_backward" in {event.key for event in profile.key_averages()}
    assert torch.equal(leaf.grad, profiled.grad)


def test_meta_tensors_get_the_fake_implementations_shapes():
    # shape inference on the meta device (e.g. a model built there) goes through the ops
    x, rois = X.to("meta"), ROIS.to("meta")
    pyramid = [torch.zeros(2, 3, 8, 8, device="meta"), torch.zeros(2, 3, 4, 4, device="meta")]
    levels = torch.zeros(2, dtype=torch.int64, device="meta")
    outputs = [
        roiops.roi_align(x, rois, 2, 1.0, 2, True),
        roiops.roi_align(x, rois, (3, 2), 1.0, 0, False, "max"),
        roiops.roi_pool(x, rois, 2),
        roiops.multi_scale_roi_align(pyramid, rois, 2, [0.5, 0.25], levels=levels),
    ]
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 2, 2), (2, 3, 3, 2), (2, 3, 2, 2)] + [
        (2, 3, 2, 2)
    ]
    assert all(o.device.type == "meta" for o in outputs)


def test_the_ops_run_on_their_tensors_gpu(monkeypatch):
    # Triton launches on the current CUDA device: an op whose tensors are on another
    # GPU makes theirs the current one while it runs (a stand-in for a cuda:1 tensor here)
    class OnGpu1:
        is_cuda = True
        device = "cuda:1"

        def get_device(self):
            return 1

    entered = []

    @contextlib.contextmanager
    def device(where):
        entered.append(where)
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(ops, "current_cuda_device", lambda: 0)
    run = ops.on_tensors_device(lambda *args: "ran")
    assert run([OnGpu1()], X) == "ran" and entered == ["cuda:1"]
    assert run(X, ROIS) == "ran" and entered == ["cuda:1"]  # CPU tensors: no device
    monkeypatch.setattr(ops, "current_cuda_device", lambda: 1)
    assert run([OnGpu1()]) == "ran" and entered == ["cuda:1"]  # already current
    # every custom op's implementation is wrapped (as ``call`` runs them, forward and backward)
    assert all(fn.__wrapped__ for fn in ops._IMPLEMENTATIONS.values())
