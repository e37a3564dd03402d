"""Leaf calls for ``torch.fx``: a public function records itself as one node.

``torch.fx.symbolic_trace`` runs a module's ``forward`` on ``Proxy`` objects. Our
functions check their arguments in Python (a ``Proxy`` is not a ``Tensor``) and call
custom ops, so tracing into them would fail or record their internals; torchvision's
ops are registered with ``torch.fx.wrap`` instead, which makes a call a leaf but only
where it is made through the module that registered it. ``fx_leaf`` makes the function
itself answer a ``Proxy`` argument with a ``call_function`` node targeting it, however it
was imported; with real tensors it only pays a few ``isinstance`` checks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TypeVar

from torch import Tensor
from torch.fx import Proxy

F = TypeVar("F", bound=Callable)


# argument types that are never a Proxy nor hold one: skipped at the cost of a lookup
_LEAVES = frozenset((Tensor, int, float, bool, str, type(None)))


def _first_proxy(values: Iterable[object]) -> Proxy | None:
    """A ``Proxy`` among ``values`` or one level inside a list, tuple or dict of them."""
    for value in values:
        if type(value) in _LEAVES:
            continue
        if isinstance(value, Proxy):
            return value
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, (list, tuple)):
            continue
        for item in value:
            if isinstance(item, Proxy):
                return item
    return None


def fx_leaf(fn: F) -> F:
    """``fn``, recorded by ``torch.fx`` tracing as one ``call_function`` node."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        proxy = _first_proxy(args)
        if proxy is None and kwargs:
            proxy = _first_proxy(kwargs.values())
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", call, args, kwargs)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
