"""Kernel launches with a fraction of the host time of Triton's ``kernel[grid](...)``.

On CUDA a call with few RoIs costs what its host side costs: the kernels run
asynchronously. Triton's ``JITFunction.run`` spends ~9 us of Python a launch on this
project's VM (Triton 3.6, a 10-argument kernel, ``benchmarks/launch_overhead.py``): 3.7 us
binding the arguments and specialising each (a C++ call per argument), 1.3 us on the
cache key, and the rest on options, launch metadata and the layers of calls around
them; the compiled kernel's own launcher then takes 0.45 us. An H100 machine's host
measured 15.6 us for ``kernel[grid](...)`` against 6.5 for the launcher alone
(``benchmarks/host_profile.py``).

``Kernel`` keeps, per kernel, a table from a fingerprint of the call to the compiled
kernel that Triton chose for it, and launches that directly. The fingerprint is at least
as fine as Triton's specialisation, so two calls that Triton would compile differently
never share an entry: per tensor its dtype and its address mod 16 (Triton: 16-byte
aligned or not), per int its value mod 16, whether it is 1 and its width (Triton: 1 is
a constant, divisible by 16 or not, i32/i64/u64; of an int it does not specialise, the
map sizes of ``roiops.gpu.tiles.UNSPECIALISED``, the width only), other values by type
and value; the keyword arguments (constexprs and options such as ``num_warps``) by name
and value, the current device and Triton's debug switch. The fingerprint is computed by
a function generated for the call's argument types (one expression per argument). A
call it has not seen goes through
``kernel[grid](...)``, which compiles or finds the kernel and launches it, and its
answer is recorded (at most MAX_ENTRIES a kernel). Triton's check that the globals a
kernel read have not changed since it was compiled is kept, and so are its launch hooks
(profilers); a kernel with pre-run hooks, or a stage-inspection hook set, takes Triton's
path. The launch goes to the current stream, as Triton's (CUDA graph capture).

``Launch`` goes further for a launcher that makes the same launch call after call: its
grid, values and keyword arguments fixed (computed once per key of the call's sizes and
settings, ``roiops.gpu.tiles.cached``), it launches the compiled kernel its first call
got while the tensors' dtypes and alignment, the device, the switches and the globals
stay those of that call, without the fingerprint and the launcher's arithmetic.

It relies on how Triton's ``JITFunction.run`` calls a compiled kernel, which this was
written against for Triton 3.6 and 3.8 (``FAST_VERSIONS``); any other version, the
interpreter (``TRITON_INTERPRET=1``) and ``ROIOPS_FAST_LAUNCH=0`` (read at every call)
take Triton's own path.
"""

from __future__ import annotations

import functools
import inspect

import torch
import triton
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction, KernelInterface

from roiops._backend import getenv

ENV_VAR = "ROIOPS_FAST_LAUNCH"
FAST_VERSIONS = ((3, 6), (3, 8))
MAX_ENTRIES = 256

_INT32_MIN, _INT32_MAX, _INT64_MAX = -(2**31), 2**31 - 1, 2**63 - 1
_MISSING = object()


def fast_launch_supported() -> bool:
    """Whether this Triton's launch convention is the one ``Kernel`` mirrors."""
    major, minor = (int(part) for part in triton.__version__.split(".")[:2])
    return FAST_VERSIONS[0] <= (major, minor) <= FAST_VERSIONS[1]


def fingerprinter(types: tuple[type, ...], specialised: tuple[bool, ...]):
    """A function of arguments of these ``types`` (position by position; ints
    ``specialised`` or not) that returns what of each can decide Triton's specialisation,
    or more (module docstring), flattened into one tuple: of an int its value mod 16,
    whether it is 1 and its width, or (not ``specialised``: ``do_not_specialize``) its
    width only, as Triton; of a tensor its dtype and address mod 16; of a float, bool or
    None nothing (their types are in the key); of anything else its value (an unhashable
    one takes Triton's path). One generated expression per argument instead of a call,
    as Triton generates its binder."""
    names = [f"a{i}" for i in range(len(types))]
    parts = []
    for a, kind, special in zip(names, types, specialised, strict=True):
        if kind is int:
            parts += [f"{a} & 15", f"{a} == 1"] if special else []
            parts += [f"{_INT32_MIN} <= {a} <= {_INT32_MAX}", f"{a} <= {_INT64_MAX}"]
        elif issubclass(kind, torch.Tensor):
            parts += [f"{a}.dtype", f"{a}.data_ptr() & 15"]
        elif kind not in (float, bool, type(None)):
            parts.append(a)  # by value
    scope: dict = {}
    exec(f"def key({', '.join(names)}):\n    return ({''.join(p + ', ' for p in parts)})", scope)
    return scope["key"]


class Kernel(KernelInterface):
    """A ``triton.jit`` kernel (``jit``, whose attributes this one answers with) whose
    ``kernel[grid](*args, **kwargs)`` launches calls it has seen without Triton's
    ``JITFunction.run``."""

    def __init__(self, jit):
        self.jit = jit
        self.fast = isinstance(jit, JITFunction) and fast_launch_supported()
        self.table: dict[tuple, tuple] = {}
        self.fingerprinters: dict[tuple, object] = {}  # argument types: fingerprinter
        if self.fast:
            self._names = [p.name for p in jit.params]
            self._specialised = tuple(not p.do_not_specialize for p in jit.params)
            empty = inspect.Parameter.empty
            self._defaults = {p.name: p.default for p in jit.params if p.default is not empty}
        functools.update_wrapper(self, jit.fn, updated=())

    def __getattr__(self, name):
        if name == "jit":  # (not set yet: a copy or an unpickling in progress)
            raise AttributeError(name)
        return getattr(self.jit, name)

    def run(self, *args, **kwargs):
        return self.jit.run(*args, **kwargs)

    def warmup(self, *args, **kwargs):
        return self.jit.warmup(*args, **kwargs)

    def direct_now(self) -> bool:
        """Whether a launch may skip Triton's ``JITFunction.run`` now: a compiled kernel of a
        Triton whose convention this mirrors, not switched off (``ROIOPS_FAST_LAUNCH=0``),
        and nothing that Triton runs before a launch, or adds to its key (pre-run hooks, a
        stage-inspection hook): those take Triton's path only."""
        return (
            self.fast
            and getenv(ENV_VAR, "1") != "0"
            and not self.jit.pre_run_hooks
            and getattr(triton.knobs.runtime, "add_stages_inspection_hook", None) is None
        )

    def __getitem__(self, grid):
        if callable(grid) or not self.direct_now():
            return self.jit[grid]
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        device = driver.active.get_current_device()
        types = tuple(map(type, args))
        fingerprints = self.fingerprinters.get(types)
        if fingerprints is None:
            if len(types) > len(self._names):  # Triton raises, saying so
                return self.jit[grid](*args, **kwargs)
            fingerprints = fingerprinter(types, self._specialised[: len(types)])
            self.fingerprinters[types] = fingerprints
        try:
            key = (device, _switches(), tuple(kwargs.items()), types, fingerprints(*args))
            entry = self.table.get(key)
        except TypeError:  # an unhashable argument
            return self.jit[grid](*args, **kwargs)
        if entry is None:
            return self._first(key, grid, args, kwargs)
        if not self.globals_unchanged():  # Triton raises, saying which
            return self.jit[grid](*args, **kwargs)
        compiled, tail = entry
        return self.fire(compiled, grid, device, (*args, *tail), launch_hooks())

    def globals_unchanged(self) -> bool:
        """Whether the globals the kernel read when it was compiled are still the values it
        read (Triton refuses a launch otherwise)."""
        for (name, _), (value, scope) in self.jit.used_global_vals.items():
            now = scope.get(name, _MISSING)
            # (the same object first: comparing tl.constexpr globals costs ~0.4 us)
            if now is not value and now != value:
                return False
        return True

    @staticmethod
    def fire(compiled, grid, device, arguments, hooks):
        """Launch ``compiled`` on ``grid`` with every argument (``tail`` included), on the
        current stream of ``device``, with Triton's launch ``hooks`` (``launch_hooks``)."""
        stream = driver.active.get_current_stream(device)
        enter, leave = hooks
        metadata = None if enter is None else compiled.launch_metadata(grid, stream, *arguments)
        n = len(grid)
        compiled.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, stream,
                     compiled.function, compiled.packed_metadata, metadata, enter, leave,
                     *arguments)  # fmt: skip
        return compiled

    def tail(self, count: int, kwargs: dict) -> tuple:
        """Every parameter after the first ``count``, as Triton passes them to a compiled
        kernel: by keyword or by default (constexprs among them, which its launcher
        skips)."""
        return tuple(
            kwargs[name] if name in kwargs else self._defaults[name] for name in self._names[count:]
        )

    def _first(self, key, grid, args, kwargs):
        """Triton's path; its compiled kernel is launched directly for ``key`` from then."""
        compiled = self.jit[grid](*args, **kwargs)
        if not _reusable(compiled, kwargs):
            return compiled
        if len(self.table) >= MAX_ENTRIES:
            self.table.clear()
            self.fingerprinters.clear()
        self.table[key] = (compiled, self.tail(len(args), kwargs))
        return compiled


# tensor count -> its ``_tensors_state`` function
_TENSORS_STATES: dict[int, object] = {}


def _tensors_state(count: int):
    """A function of ``count`` tensors that returns ``(state, addresses)``: of each tensor
    its dtype, device index and address mod 16 (Triton specialises on 16-byte alignment),
    flattened, and the addresses; generated as one expression (a loop over the tensors
    and a zip with their addresses took twice its time)."""
    state = _TENSORS_STATES.get(count)
    if state is None:
        names = [f"t{i}" for i in range(count)]
        parts = "".join(f"{t}.dtype, {t}.get_device(), (p{i} := {t}.data_ptr()) & 15, "
                        for i, t in enumerate(names))  # fmt: skip
        addresses = "".join(f"p{i}, " for i in range(count))
        scope: dict = {}
        exec(f"def state({', '.join(names)}):\n    return ({parts}), ({addresses})", scope)
        state = _TENSORS_STATES[count] = scope["state"]
    return state


# Triton's chain of launch hooks (knobs.HookChain; read in 3.6 and 3.8), or None
_HookChain = getattr(triton.knobs, "HookChain", None)


def launch_hooks() -> tuple:
    """Triton's launch hooks ``(enter, exit)`` (profilers, e.g. proton), or ``(None, None)``
    where neither would do anything. Triton keeps each in a chain (``HookChain``: 3.6, 3.8),
    which its launches call even when it is empty, after building the launch's metadata
    for it (``CompiledKernel.launch_metadata``): a launch given None for both skips the
    metadata and the two calls, and does nothing less."""
    runtime = triton.knobs.runtime
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    # (each no hook, or a chain of none; written out, as a call of a test costs ~0.1 us)
    if (enter is None or (type(enter) is _HookChain and not enter.calls)) and (
        leave is None or (type(leave) is _HookChain and not leave.calls)
    ):
        return None, None
    return enter, leave


def _switches() -> tuple:
    """Triton's switches that change what it compiles (its key holds them)."""
    knobs = triton.knobs
    return knobs.runtime.debug, knobs.compilation.instrumentation_mode


def _reusable(compiled, kwargs: dict) -> bool:
    """Whether a launch's compiled kernel may be launched again directly: compiled (not
    an asynchronous compile in progress) and given no tensor by keyword (keyed by
    identity, and kept alive by the table)."""
    if compiled is None or hasattr(compiled, "result"):
        return False
    return not any(isinstance(value, torch.Tensor) for value in kwargs.values())


class Launch:
    """A launch that a launcher makes call after call: ``kernel[grid](*tensors, *values,
    **kwargs)`` with the grid, the values and the keyword arguments fixed and each call's
    tensors. A launcher keeps one for each key of what decides those (sizes, scalars and
    settings: ``roiops.gpu.tiles.cached``; its tensors' dtypes and device too, or calls
    that alternate between them would take ``Kernel``'s path) and calls it with a call's
    tensors.

    The first call goes through ``kernel`` (Triton's path for a call it has not seen);
    from then on, while the tensors' dtypes, devices and 16-byte alignment, the current
    device, Triton's switches and the kernel's globals are those it was launched with,
    the compiled kernel is launched directly: without ``Kernel``'s fingerprint and table,
    and without the launcher's grid and arguments, which were computed once
    (``benchmarks/host_overhead.py``). It is given the tensors' addresses, as ints: for
    each tensor Triton's launcher would otherwise call its ``data_ptr()`` and then ask
    the driver whether the address is the device's (``cuPointerGetAttribute``), which
    the first call, on the same devices, answered (a launch hook, e.g. a profiler, which
    may read the tensors, gets them instead). Anything else, or a kernel that is not a
    ``Kernel``, takes ``kernel[grid](...)``, and the next direct launch is of what that
    launched."""

    __slots__ = ("kernel", "grid", "values", "kwargs", "seen")

    def __init__(self, kernel, grid: tuple, values: tuple = (), **kwargs):
        self.kernel, self.grid, self.values, self.kwargs = kernel, grid, values, kwargs
        self.seen = None  # (state, compiled, every argument after the tensors)

    def __call__(self, *tensors):
        kernel = self.kernel
        seen = self.seen
        direct = isinstance(kernel, Kernel) and kernel.direct_now()
        if direct:
            device = driver.active.get_current_device()
            tensors_state, addresses = _tensors_state(len(tensors))(*tensors)
            state = (device, _switches(), tensors_state)
            if seen is not None and seen[0] == state and kernel.globals_unchanged():
                hooks = launch_hooks()
                # the addresses, not the tensors (but for a launch hook, which may read them)
                passed = addresses if hooks[0] is None else tensors
                return kernel.fire(seen[1], self.grid, device, (*passed, *seen[2]), hooks)
        args = (*tensors, *self.values)
        compiled = kernel[self.grid](*args, **self.kwargs)
        if direct and _reusable(compiled, self.kwargs):
            self.seen = (state, compiled, (*self.values, *kernel.tail(len(args), self.kwargs)))
        return compiled
