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

    def __getitem__(self, grid):
        if (
            not self.fast
            or getenv(ENV_VAR, "1") == "0"
            or callable(grid)
            # what Triton runs before a launch, or adds to its key: its path only
            or self.jit.pre_run_hooks
            or getattr(triton.knobs.runtime, "add_stages_inspection_hook", None) is not None
        ):
            return self.jit[grid]
        return functools.partial(self._launch, grid)

    def _launch(self, grid, *args, **kwargs):
        device = driver.active.get_current_device()
        knobs = triton.knobs
        switches = (knobs.runtime.debug, knobs.compilation.instrumentation_mode)
        types = tuple(map(type, args))
        fingerprints = self.fingerprinters.get(types)
        if fingerprints is None:
            if len(types) > len(self._names):  # Triton raises, saying so
                return self.jit[grid](*args, **kwargs)
            fingerprints = fingerprinter(types, self._specialised[: len(types)])
            self.fingerprinters[types] = fingerprints
        try:
            key = (device, switches, tuple(kwargs.items()), types, fingerprints(*args))
            entry = self.table.get(key)
        except TypeError:  # an unhashable argument
            return self.jit[grid](*args, **kwargs)
        if entry is None:
            return self._first(key, grid, args, kwargs)
        for (name, _), (value, scope) in self.jit.used_global_vals.items():
            now = scope.get(name, _MISSING)
            # (the same object first: comparing tl.constexpr globals costs ~0.4 us)
            if now is not value and now != value:  # Triton raises, saying which
                return self.jit[grid](*args, **kwargs)
        compiled, tail = entry
        arguments = (*args, *tail)
        stream = driver.active.get_current_stream(device)
        enter = knobs.runtime.launch_enter_hook
        metadata = None if enter is None else compiled.launch_metadata(grid, stream, *arguments)
        n = len(grid)
        compiled.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, stream,
                     compiled.function, compiled.packed_metadata, metadata, enter,
                     knobs.runtime.launch_exit_hook, *arguments)  # fmt: skip
        return compiled

    def _first(self, key, grid, args, kwargs):
        """Triton's path; its compiled kernel is launched directly for ``key`` from then."""
        compiled = self.jit[grid](*args, **kwargs)
        if compiled is None or hasattr(compiled, "result"):  # (an asynchronous compile)
            return compiled
        if any(isinstance(value, torch.Tensor) for value in kwargs.values()):
            return compiled  # (keyed by identity, and kept alive by the table: not kept)
        if len(self.table) >= MAX_ENTRIES:
            self.table.clear()
            self.fingerprinters.clear()
        # every parameter after the positional ones, as Triton passes them: by keyword
        # or by default (constexprs among them, which the compiled launcher skips)
        tail = tuple(
            kwargs[name] if name in kwargs else self._defaults[name]
            for name in self._names[len(args) :]
        )
        self.table[key] = (compiled, tail)
        return compiled
