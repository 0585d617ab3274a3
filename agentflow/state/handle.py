"""``ctx.state``: one key's state in a namespace, read and written through the state store.

A handle is cheap (a few attributes); a handler gets one per event for the event's key in its agent's
namespace, and makes others with :meth:`StateHandle.of`. Keys are stored as ``<namespace>:<key>``, so a
namespace may not contain ``:`` (a key may contain anything)::

    count = await ctx.state.update(lambda n: n + 1, default=0)
    profile = await ctx.state.of("profiles", user_id).typed(Profile).get()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Generic, TypeVar, overload

import msgspec

from .store import StateStore
from .unit import Unit

__all__ = ["MEMORY_NAMESPACE_PREFIX", "WORKFLOW_NAMESPACE", "StateHandle"]

#: The namespace of ``ctx.workflow_state`` (keyed by correlation id). Namespaces starting with "_" are agentflow's.
WORKFLOW_NAMESPACE: Final = "_workflow"
#: ``ctx.memory`` of agent NAME lives in namespace ``_memory.NAME``, keyed like ``ctx.state``.
MEMORY_NAMESPACE_PREFIX: Final = "_memory."

T = TypeVar("T")
S = TypeVar("S")


class StateHandle(msgspec.Struct, Generic[T], gc=False):
    """The state of ``key`` in ``namespace``. Values are anything msgspec encodes; ``typed(MyStruct)`` gives
    a handle that decodes to ``MyStruct`` (and refuses values of another shape with StateDecodeError)::

        class Cart(msgspec.Struct):
            items: list[str] = []

        cart = ctx.state.typed(Cart)
        await cart.update(lambda c: Cart(items=[*c.items, sku]), default=Cart())

    Writes (``set``, ``delete``) go behind: they are durable once the event is acknowledged, which the worker
    does only after they are committed. ``update`` checks the version it read (see ``StateStore.update``).
    Made by the runner for handlers; in tests, ``StateHandle(store, "agent", "key", store.unit("agent:evt-1"))``
    (a handle made so checks its namespace and key on first use; :meth:`of` checks them at once).
    """

    # A Struct without garbage-collector tracking (it is in no reference cycle): a handler makes several per
    # event, and tracked objects make the collector run more often. No __post_init__: msgspec calling one back
    # costs more than the whole construction, and ``of`` (one handle per call in the usual
    # ``ctx.state.of(ns, key).get()``) checks and joins the key itself.
    _store: StateStore
    namespace: str
    key: str
    _unit: Unit | None = None
    _type: Any = None
    _full: str = ""  # "<namespace>:<key>", checked; "" until the first use of a handle made directly
    _decoder: msgspec.msgpack.Decoder[Any] | None = None

    def _resolve(self) -> str:
        """Check and join namespace and key (and find the decoder of a typed handle) on a handle's first use."""
        full = self._full
        if not full:
            if self._type is not None:
                self._decoder = self._store.decoder_for(self._type)
            full = self._full = _full_key(self.namespace, self.key)
        return full

    def __repr__(self) -> str:
        typed = "" if self._type is None else f" type={getattr(self._type, '__name__', self._type)}"
        return f"<StateHandle {self.namespace}:{self.key!r}{typed}>"

    @property
    def value_type(self) -> Any:
        """The type values decode to (None: untyped — dicts, lists, strings, numbers)."""
        return self._type

    @property
    def unit(self) -> Unit | None:
        return self._unit

    # The operations return the store's coroutine instead of awaiting it in one of their own (and pass their
    # arguments by position): on the memory backend a second coroutine per call would cost a fifth of the
    # operation.

    @overload
    def get(self) -> Coroutine[Any, Any, T | None]: ...

    @overload
    def get(self, default: S) -> Coroutine[Any, Any, T | S]: ...

    def get(self, default: Any = None) -> Coroutine[Any, Any, Any]:
        """The current value, or ``default`` when the key has none (never set, deleted or expired)."""
        full = self._full or self._resolve()
        return self._store.get(full, self._decoder, default)

    def set(self, value: T, ttl_s: float | None = None, *, once: bool = False) -> Coroutine[Any, Any, None]:
        """Store ``value``, expiring after ``ttl_s`` (default: ``[memory] default_ttl_s``, unset: never).

        ``once=True``: if this event already made this write (a redelivery after a crash, or a retry), it is
        skipped, so the event's change is applied once.
        """
        return self._store.set(self._full or self._resolve(), value, ttl_s, self._unit, once)

    def update(
        self,
        fn: Callable[[Any], T | Awaitable[T]],
        *,
        default: Any = None,
        ttl_s: float | None = None,
        once: bool = False,
    ) -> Coroutine[Any, Any, T]:
        """Replace the value with ``fn(current)`` (``default`` when there is none) under a version check,
        retried on conflict (at most ``max_update_attempts`` times); return the new value.

        With ``once=True`` a redelivered event's update is not applied again: the stored value is returned.
        """
        full = self._full or self._resolve()
        result: Coroutine[Any, Any, T] = self._store.update(full, fn, self._decoder, default, ttl_s, self._unit, once)
        return result

    def delete(self) -> Coroutine[Any, Any, None]:
        """Remove the value (behind, like ``set``)."""
        return self._store.delete(self._full or self._resolve(), self._unit)

    def typed(self, tp: type[S]) -> StateHandle[S]:
        """This key, decoded as ``tp`` (a msgspec Struct, or any type msgspec can decode into)."""
        store = self._store
        return StateHandle(store, self.namespace, self.key, self._unit, tp, self._resolve(), store.decoder_for(tp))

    def of(self, namespace: str, key: str) -> StateHandle[Any]:
        """Another key's state (in any namespace), written as part of the same event."""
        # _full_key's checks, inlined: a handle per call is the usual ``ctx.state.of(ns, key).get()``, and a
        # second call costs a tenth of a memory read (tests/agentflow/state: both refuse the same inputs).
        if ":" in namespace or not namespace or not isinstance(key, str):
            _full_key(namespace, key)  # raises the error that says what is wrong
        return StateHandle(self._store, namespace, key, self._unit, None, namespace + ":" + key)


def _full_key(namespace: str, key: str) -> str:
    """The store key of ``key`` in ``namespace``; refuses a namespace that would make it ambiguous."""
    if ":" in namespace or not namespace:
        raise ValueError(
            f"A state namespace must be non-empty and free of ':', got {namespace!r}; the store joins "
            "namespace and key with ':'."
        )
    if not isinstance(key, str):
        raise TypeError(f"A state key must be a string, got {key!r}; use str(key) or ctx.state.of(...).")
    return namespace + ":" + key
