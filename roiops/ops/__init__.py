"""The ops as ``torch.library`` custom ops: schema, fake impl, autograd, backend dispatch.

The layouts every backend shares (argmax, input gradient) are in ``roiops._layout``;
this module adapts the NumPy reference's readable ``[K, C, ph, pw]`` argmax to them.

The public functions call an op's forward, and its autograd formulas its backward,
through :func:`call`, which skips torch's dispatcher in plain eager calls (see
:func:`eager`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from roiops import _validate
from roiops._backend import select_backend

# custom op -> its implementation (the function it was made from, run on its tensors'
# device), which :func:`call` runs directly; the forward ops (:func:`forward_op`)
_IMPLEMENTATIONS: dict[object, Callable] = {}
_FORWARD_OPS: set[object] = set()


# the dispatcher's kernels for CPU and CUDA tensors, one library per namespace
_KERNELS: dict[str, torch.library.Library] = {}
KERNEL_KEYS = ("CPU", "CUDA")


def custom_op(name: str):
    """``torch.library.custom_op(name, mutates_args=())`` of an implementation that runs
    on its tensors' GPU (:func:`on_tensors_device`). For CPU and CUDA tensors the same
    implementation is also the dispatcher's kernel itself (``KERNEL_KEYS``, which come
    before the custom op's own, a CompositeExplicitAutograd kernel): a call through
    ``torch.ops`` (``roiops bench``, a ``torch.compile``d model) then skips the custom
    op's Python layers below autograd (its backend lookup, a ``torch._dynamo`` guard and
    a check that outputs do not alias inputs, which these fresh outputs never do): 4.5
    us against 5.9 for an op that allocates its output, on this project's VM. Fake
    tensors, autograd and other devices are the custom op's."""

    def register(fn: Callable):
        op, run = _registered(name, fn)
        _IMPLEMENTATIONS[op] = run
        return op

    return register


def forward_op(name: str):
    """:func:`custom_op`, for an op that the public functions call through :func:`call`
    (and whose autograd formulas :func:`register_autograd` also gives eager calls)."""

    def register(fn: Callable):
        op = custom_op(name)(fn)
        _FORWARD_OPS.add(op)
        return op

    return register


def _registered(name: str, fn: Callable):
    """``(op, run)``: :func:`custom_op`'s op and the implementation ``run`` (``fn`` on its
    tensors' device) that it and the dispatcher's CPU and CUDA kernels call; and the
    op's autograd kernel for CPU and CUDA tensors (:func:`_autograd_kernel`)."""
    run = on_tensors_device(fn)
    op = torch.library.custom_op(name, mutates_args=())(run)
    namespace, short_name = name.split("::")
    if namespace not in _KERNELS:
        _KERNELS[namespace] = torch.library.Library(namespace, "IMPL")
    for key in KERNEL_KEYS:
        _KERNELS[namespace].impl(short_name, run, key)
    kernel = _autograd_kernel(op, run)
    if kernel is not None:
        for key in AUTOGRAD_KEYS:
            _KERNELS[namespace].impl(short_name, kernel, key, with_keyset=True)
    return op, run


# the autograd dispatch keys of KERNEL_KEYS' tensors, where :func:`_autograd_kernel` goes
AUTOGRAD_KEYS = ("AutogradCPU", "AutogradCUDA")
# dispatch key set (its raw bits) -> whether below autograd it leads straight to a CPU or
# CUDA kernel (:func:`_direct_below_autograd`; a dict lookup is a fifth of the test)
_DIRECT_BELOW_AUTOGRAD: dict[int, bool] = {}


def _direct_below_autograd(keyset) -> bool:
    C = torch._C
    # (ADInplaceOrView: a fallthrough for ops that do not mutate their inputs)
    below = (keyset & C._after_autograd_keyset).remove(C.DispatchKey.ADInplaceOrView)
    direct = below.highestPriorityTypeId() in (C.DispatchKey.CPU, C.DispatchKey.CUDA)
    _DIRECT_BELOW_AUTOGRAD[keyset.raw_repr()] = direct
    return direct


def _autograd_kernel(op, run: Callable) -> Callable | None:
    """The dispatcher's autograd kernel for ``op`` on CPU and CUDA tensors, in place of the
    custom op's own (an ``Autograd`` kernel, which these keys come before). Where the
    dispatcher would go from autograd straight to the op's CPU or CUDA kernel (no
    functionalization, tensor subclass, dispatch mode, tracer or functorch layer below
    autograd: the dispatch keys say so), it calls that kernel, ``run``, itself, or, where
    autograd records the call, runs it under the op's formulas as :func:`call` does
    (``register_autograd``'s Function); otherwise it is the custom op's own kernel. A
    call through ``torch.ops`` (``roiops bench``, a ``torch.compile``d model at run time)
    then skips the custom op's Python autograd layer and a second trip through the
    dispatcher: 8.6 -> 8.0 us of host time for ``torch.ops.roiops.ps_roi_align``, 9.0 ->
    8.3 for ``roi_align`` (this project's VM, kernels not launched, A/B), and 7.85 with
    the keys' answer looked up by their bits (``_DIRECT_BELOW_AUTOGRAD``). None where
    this torch lacks the private helper that builds the custom op's own kernel (the op
    then keeps it)."""
    try:
        from torch._library.autograd import make_autograd_impl

        own = make_autograd_impl(op._opoverload, op)
    except (ImportError, AttributeError, TypeError):
        return None
    C = torch._C
    # (a torch.autograd.Function does not see the tensors in a list: a pyramid's features
    # take the custom op's own Function, which does, when they need a gradient)
    recordable = not any(a.type.kind() == "ListType" for a in op._opoverload._schema.arguments)

    def kernel(keyset, *args, **kwargs):
        direct = _DIRECT_BELOW_AUTOGRAD.get(keyset.raw_repr())
        if direct is None:
            direct = _direct_below_autograd(keyset)
        if direct and not kwargs:
            if not (C.is_grad_enabled() and C._any_requires_grad(*args)):
                return run(*args)
            if recordable and op in _EAGER_AUTOGRAD:
                return _EAGER_AUTOGRAD[op].apply(*args)
        return own(keyset, *args, **kwargs)

    return kernel


def current_cuda_device() -> int:
    """``torch.cuda.current_device()`` where CUDA is initialised (a CUDA tensor exists):
    without its lazy-initialisation check, three Python calls of every CUDA op call."""
    return torch._C._cuda_getDevice()


def on_tensors_device(fn: Callable) -> Callable:
    """``fn``, run with its tensors' CUDA device as the current one. Triton launches its
    kernels on the current device (as torchvision's C++ kernels take a device guard, and
    the dispatcher sets none for Python kernels): a model on ``cuda:1`` in a process
    whose current device is ``cuda:0`` would otherwise fail or launch on the wrong GPU.
    The first argument is a tensor, or a list of them (a pyramid); an op's tensors share
    one device (``_validate``)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = args[0] if isinstance(args[0], Tensor) else args[0][0]
        if first.is_cuda and first.get_device() != current_cuda_device():
            with torch.cuda.device(first.device):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


# forward custom op -> a torch.autograd.Function that runs its implementation with the
# op's own autograd formulas (``register_autograd``), for eager calls autograd records
_EAGER_AUTOGRAD: dict[object, type] = {}


def register_autograd(op, backward: Callable, setup_context: Callable) -> None:
    """``op.register_autograd(backward, setup_context=setup_context)``; for a forward op
    (:func:`forward_op`), also the same formulas as a ``torch.autograd.Function`` over its
    implementation, which :func:`call` runs for eager calls that autograd records: the
    same saved tensors and backward, without the custom op's Python autograd wrappers
    (~40 us of host time a call on an H100 machine) or the zero tensor those materialise
    for the argmax's (never used) gradient. (``backward`` calls the backward ops through
    :func:`call` itself.)"""
    op.register_autograd(backward, setup_context=setup_context)
    if op not in _FORWARD_OPS:
        return
    impl = _IMPLEMENTATIONS[op]

    def forward(ctx, *args):
        # no zeros for the gradients autograd has not got (the argmax's never)
        ctx.set_materialize_grads(False)
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    def backward_or_none(ctx, grad, *_):
        # the first output is the only differentiable one: without its gradient (an
        # unused output), none flows to the inputs
        if grad is None:
            return (None,) * len(ctx.needs_input_grad)
        # a list argument (a pyramid's levels) is no input of a torch.autograd.Function:
        # its tensors do not require grad where ``eager`` chose this way (the boxes do)
        return tuple(None if type(g) is list else g for g in backward(ctx, grad, *_))

    name = f"{op._qualname.split('::')[1]}_eager"
    body = {"forward": staticmethod(forward), "backward": staticmethod(backward_or_none)}
    _EAGER_AUTOGRAD[op] = type(name, (torch.autograd.Function,), body)


def register_input_gradient(op, backward_op) -> None:
    """:func:`register_autograd` of an op ``(input, rois, *params)`` whose only gradient is
    its input's: it keeps the RoIs, the parameters and the input's shape, and its
    backward is ``backward_op(grad, rois, *params, *input_shape)`` (none for the RoIs and
    the parameters)."""

    def setup_context(ctx, inputs, output):
        input, rois, *params = inputs
        ctx.save_for_backward(rois)
        ctx.params = params
        ctx.input_shape = tuple(input.shape)

    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        grad_input = call(backward_op, grad, rois, *ctx.params, *ctx.input_shape)
        return grad_input, None, *(None for _ in ctx.params)

    register_autograd(op, backward, setup_context)


def call(op, *args):
    """``op(*args)``, or, where nothing could tell the difference (:func:`eager`), the
    function it was made from, called directly: the same kernels and result without the
    ~6 us that a trip through torch's dispatcher and the custom op's Python wrappers
    costs a call (of ~15 us in all; it is most of an op's host time on CUDA, where the
    kernel runs asynchronously); under a forward op's autograd formulas where autograd
    records the call (:func:`register_autograd`)."""
    how = eager(args)
    if how == PLAIN:
        return _IMPLEMENTATIONS[op](*args)
    if how == RECORDED and op in _EAGER_AUTOGRAD:
        return _EAGER_AUTOGRAD[op].apply(*args)
    return op(*args)


# how an eager call may skip the dispatcher (``eager``)
PLAIN, RECORDED = "plain", "recorded"


def eager(args) -> str | None:
    """How calling an op's implementation directly with ``args`` is the same as calling
    the op: ``PLAIN`` in eager mode with plain tensors with data (or lists of them) that
    autograd will not record and nothing that acts inside torch's dispatcher (dispatch or
    function modes such as FakeTensorMode or FlopCounterMode, functorch transforms, the
    profiler, torch.jit tracing); ``RECORDED`` likewise but some tensor argument (not in
    a list) requires grad; None otherwise: the op is called, which all of those see."""
    # first: torch.compile traces this function, and records the op
    if torch.compiler.is_compiling():
        return None
    C = torch._C
    if (
        C._is_tracing()
        or C._len_torch_dispatch_stack()
        or C._is_torch_function_mode_enabled()
        or C._are_functorch_transforms_active()
        or C._autograd._profiler_enabled()
    ):
        return None
    grad = C.is_grad_enabled()
    how = PLAIN
    for arg in args:
        kind = type(arg)
        if kind is Tensor:
            if arg.is_meta:
                return None
            if grad and arg.requires_grad:
                how = RECORDED
        elif kind in _SCALARS:  # (most arguments: a set lookup, not a call of _plain)
            continue
        elif kind is list:
            if not all(_plain(t, grad) for t in arg):
                return None
        elif not _plain(arg, grad):
            return None
    return how


# argument types that are plain without a look inside (``_plain``)
_SCALARS = frozenset((int, float, bool, str, type(None)))


def dispatcher_free(args) -> bool:
    """Whether the op's implementation may run directly, autograd recording nothing."""
    return eager(args) == PLAIN


def _plain(value: object, grad: bool) -> bool:
    """Not a tensor, or a plain ``Tensor`` (no subclass) that autograd will not record,
    with data (a meta tensor is answered by the op's fake implementation, a shape)."""
    if type(value) is Tensor:
        return not (value.is_meta or (grad and value.requires_grad))
    return type(value) in (int, float, bool) or not isinstance(value, Tensor)


def checked_backend(device: torch.device, rois: Tensor, batch_size: int, op: str, *checks,
                    scale: float | None = None, grid: tuple | None = None,
                    indices: str = "boxes' batch indices") -> str:  # fmt: skip
    """The backend that serves ``device``, after checking the boxes' values (and running
    the op's further value ``checks``, zero-argument callables; ``scale``, the boxes'
    ``spatial_scale``: their scaled corners and sides finite; ``grid``, the arguments
    of ``_validate.check_adaptive_grid`` after the RoIs and before ``op``, its sampling
    grids; ``indices``, the batch indices' name in errors) where reading the values is
    free (``_validate.roi_values_checked``: CPU, the reference backend, or
    ``ROIOPS_CHECK_VALUES=1``); on CUDA the kernels take any value instead."""
    backend = select_backend(device)
    if _validate.roi_values_checked(device, backend):
        _validate.check_roi_values(rois, batch_size, op, indices)
        for check in checks:
            check()
        if scale is not None:
            _validate.check_scaled_boxes(rois, scale, op)
        if grid is not None:
            _validate.check_adaptive_grid(rois, *grid[:5], op, *grid[5:])
    return backend


def host_array(t: Tensor) -> np.ndarray:
    """A tensor's values as a NumPy array on the host (for the reference backend)."""
    return t.detach().cpu().numpy()


def argmax_from_reference(argmax: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(argmax.transpose(0, 2, 3, 1))).to(device)


def argmax_to_reference(argmax: Tensor) -> np.ndarray:
    return host_array(argmax).transpose(0, 3, 1, 2)
