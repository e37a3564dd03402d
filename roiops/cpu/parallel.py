"""``parallel_njit``: the CPU kernels' decorator, and their serial twins for forked children.

Numba runs a ``parallel=True`` kernel on its threading layer, GNU OpenMP on Linux unless
TBB is installed. GNU OpenMP's threads do not survive ``fork()``: in a process forked
after its parent launched them (a DataLoader worker, which Linux starts by forking)
Numba terminates the process at its first parallel launch. There roiops swaps every
kernel for a *serial twin* (``use_serial_kernels``): the same Python function compiled
without ``parallel=True`` (``prange`` runs as ``range``), so the same arithmetic in the
same order per output and gradient cell, one thread, as a DataLoader worker runs anyway.
A twin has its own qualified name, so Numba caches it apart from the parallel kernel.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types

from numba import njit
from numba.core.registry import CPUDispatcher

_KERNELS: dict[CPUDispatcher, types.FunctionType] = {}  # parallel kernel -> its function
_serial = False  # (this process was forked from one whose GNU OpenMP threads had started)


def parallel_njit(fn: types.FunctionType) -> CPUDispatcher:
    """``njit(parallel=True, cache=True)(fn)``, its serial twin made where needed (at
    once in a process that runs serial kernels)."""
    if _serial:
        return serial_twin(fn)
    kernel = njit(parallel=True, cache=True)(fn)
    _KERNELS[kernel] = fn
    return kernel


def serial_twin(fn: types.FunctionType) -> CPUDispatcher:
    """``fn`` compiled without ``parallel=True``, cached under its own name."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)  # fmt: skip
    twin.__qualname__ = f"{fn.__qualname__}_serial"
    twin.__module__ = fn.__module__
    twin.__doc__ = fn.__doc__
    return njit(cache=True)(twin)


_TWINS: dict[CPUDispatcher, CPUDispatcher] = {}  # parallel kernel -> its serial twin


def _swap(replacements: dict) -> None:
    """Every name in ``roiops.cpu``'s modules that holds a key of ``replacements`` (a
    kernel of its own, or one imported) now holds its value."""
    for name, module in list(sys.modules.items()):
        if not name.startswith("roiops.cpu.") or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if isinstance(value, CPUDispatcher) and value in replacements:
                setattr(module, attribute, replacements[value])


def use_serial_kernels() -> None:
    """From now on every kernel runs as its serial twin; kernels calling kernels compile
    against the twins (they look their callees up when they compile)."""
    for kernel, fn in _KERNELS.items():
        if kernel not in _TWINS:
            _TWINS[kernel] = serial_twin(fn)
    _swap(_TWINS)


@contextlib.contextmanager
def serial_kernels():
    """The serial twins inside a ``with`` block (``roiops.warmup`` compiles them into
    Numba's cache so), the parallel kernels again after it (but in a process that must
    keep the twins)."""
    use_serial_kernels()
    try:
        yield
    finally:
        if not _serial:
            _swap({twin: kernel for kernel, twin in _TWINS.items()})


def _after_fork_in_child() -> None:
    """In a child forked after Numba started GNU OpenMP threads: serial kernels."""
    global _serial
    numba = sys.modules.get("numba")
    omppool = sys.modules.get("numba.np.ufunc.omppool")
    try:
        layer = numba.threading_layer() if numba is not None else None
    except ValueError:  # (no parallel kernel has run: the child may start its own)
        layer = None
    if layer == "omp" and getattr(omppool, "openmp_vendor", None) == "GNU":
        _serial = True
        use_serial_kernels()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
