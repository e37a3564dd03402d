"""Which backend computes an op: ``ROIOPS_BACKEND`` or ``roiops.use_backend``.

Values: ``auto`` (default: Numba on CPU, Triton on CUDA), ``numba`` (CPU kernels),
``triton`` (GPU kernels; CPU tensors too when ``TRITON_INTERPRET=1``, Triton's
interpreter, which is how CI runs them), ``reference`` (the NumPy spec, any device, slow).
The choice is read at call time. A backend that is asked for explicitly and cannot
serve the tensors' device raises an error; it never falls back silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os

import torch

ENV_VAR = "ROIOPS_BACKEND"
CHOICES = ("auto", "numba", "triton", "reference")

# backend -> device types it serves
SERVES = {
    "numba": ("cpu",),
    "triton": ("cuda",),
    "reference": ("cpu", "cuda", "mps", "xpu", "meta"),
}
AUTO = {"cpu": "numba", "cuda": "triton"}

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("roiops_backend", default=None)

# os.environ's own table where it is one of bytes (POSIX): ``getenv`` reads it directly
_RAW_ENVIRON = getattr(os.environ, "_data", None) if os.name == "posix" else None


def getenv(name: str, default: str) -> str:
    """``os.environ.get(name, default)``, read at every call as that is, in a twentieth of
    its time: ``os.environ.get`` of an unset variable raises and catches a KeyError
    inside (~0.5 us, read twice by a CUDA call), where the bytes table behind
    ``os.environ`` (which its updates keep current) answers in ~25 ns."""
    if _RAW_ENVIRON is None:
        return os.environ.get(name, default)
    value = _RAW_ENVIRON.get(name.encode())
    return default if value is None else os.fsdecode(value)


# torch.device -> its type ("cpu", "cuda", ...): ``device.type`` builds a new string at
# every read (~0.2 us), a dict lookup by device takes a tenth of that
_DEVICE_TYPES: dict[torch.device, str] = {}


def device_type(device: torch.device) -> str:
    kind = _DEVICE_TYPES.get(device)
    if kind is None:
        kind = _DEVICE_TYPES[device] = device.type
    return kind


def _check_choice(name: str, where: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"{where}: unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    return name


@contextlib.contextmanager
def use_backend(name: str):
    """Force a backend inside a ``with`` block (takes precedence over ROIOPS_BACKEND)."""
    token = _forced.set(_check_choice(str(name).strip().lower(), "use_backend"))
    try:
        yield
    finally:
        _forced.reset(token)


def requested_backend() -> str:
    name = _forced.get()
    if name is None:
        name = getenv(ENV_VAR, "auto").strip().lower() or "auto"
        _check_choice(name, ENV_VAR)
    return name


def triton_interpreted() -> bool:
    return getenv("TRITON_INTERPRET", "0") == "1"


@functools.cache  # (a module search is a microsecond of every call otherwise)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _require_triton() -> None:
    if not _triton_installed():
        raise RuntimeError(
            f"{ENV_VAR}: the triton backend needs the 'triton' package (it comes with CUDA "
            "builds of torch); it is not installed"
        )


def select_backend(device: torch.device) -> str:
    """The backend that serves tensors on ``device``; raises if none can."""
    name = _select(device)
    if name == "triton":
        _require_triton()
    return name


def would_serve(device: torch.device) -> str | None:
    """The backend a call on ``device`` would run, or None where none would (e.g. meta
    tensors): what a fake implementation mirrors (the strides of the real outputs)."""
    try:
        return _select(device)
    except (RuntimeError, NotImplementedError):
        return None


def _select(device: torch.device) -> str:
    name = requested_backend()
    kind = device_type(device)
    if name == "auto":
        backend = AUTO.get(kind)
        if backend is None:
            raise NotImplementedError(
                f"roiops has no kernels for {kind} tensors; "
                f"{ENV_VAR}=reference runs the NumPy spec on them, slowly"
            )
        return backend
    if name == "triton" and kind == "cpu":
        if not triton_interpreted():
            raise RuntimeError(
                f"{ENV_VAR}=triton needs CUDA tensors, or TRITON_INTERPRET=1 to run the "
                "Triton kernels on CPU tensors through Triton's interpreter"
            )
        return name
    if kind not in SERVES[name]:
        raise RuntimeError(f"{ENV_VAR}={name} cannot serve {kind} tensors")
    return name
