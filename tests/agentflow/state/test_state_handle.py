"""The state handle's fast paths against the checked ones they stand for.

``StateHandle.of`` checks namespace and key inline and a handle made directly checks them on first use;
``StateCodec.load`` is ``decode(unpack(...))`` in one call. Each pair must accept and refuse the same inputs.
"""

from __future__ import annotations

import zlib
from typing import Any

import msgspec
import pytest

from agentflow.errors import StateDecodeError
from agentflow.state import StateHandle, StateStore
from agentflow.state.codec import StateCodec

BAD_NAMES: list[tuple[str, Any, type[Exception], str]] = [
    ("a:b", "k", ValueError, "free of ':'"),
    ("", "k", ValueError, "must be non-empty"),
    ("agent", 5, TypeError, "must be a string"),
]


@pytest.mark.parametrize(("namespace", "key", "error", "match"), BAD_NAMES)
async def test_of_and_a_handle_made_directly_refuse_the_same_names(
    namespace: str, key: Any, error: type[Exception], match: str
) -> None:
    async with StateStore() as store:
        parent: StateHandle[Any] = StateHandle(store, "agent", "k")
        with pytest.raises(error, match=match) as by_of:
            parent.of(namespace, key)
        direct: StateHandle[Any] = StateHandle(store, namespace, key)
        with pytest.raises(error, match=match) as on_use:
            await direct.get()
        assert str(by_of.value) == str(on_use.value)


async def test_of_and_a_handle_made_directly_name_the_same_stored_key() -> None:
    async with StateStore() as store:
        await StateHandle(store, "agent", "k").of("profiles", "a:b").set("v")
        assert await StateHandle(store, "profiles", "a:b").get() == "v"
        assert await store.get("profiles:a:b") == "v"
        typed = StateHandle(store, "profiles", "n", None, int)
        await typed.set(3)
        assert await typed.get() == 3
        assert await StateHandle(store, "agent", "k").of("profiles", "n").typed(int).get() == 3


class Point(msgspec.Struct):
    x: int


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("value", [None, 0, "text", {"n": 1, "text": "x" * 500}, [1, 2, 3]])
def test_load_is_decode_of_unpack(value: Any, compress: bool) -> None:
    codec = StateCodec(max_state_bytes=10_000, compress_from_bytes=16 if compress else None)
    stored = codec.pack(codec.encode("k", value))
    assert codec.load("k", stored) == codec.decode("k", codec.unpack("k", stored)) == value


@pytest.mark.parametrize(
    ("stored", "decoder"),
    [
        (b"\x07abc", None),  # an unknown header
        (b"\x01" + b"not zlib", None),  # corrupt compressed bytes
        (b"\x01" + zlib.compress(msgspec.msgpack.encode("z" * 200)), None),  # inflates past max_state_bytes
        (b"\x00" + msgspec.msgpack.encode({"x": "not an int"}), msgspec.msgpack.Decoder(Point)),  # wrong shape
        (b"\x00\xc1", None),  # msgpack's never-used byte
    ],
)
def test_load_refuses_what_decode_of_unpack_refuses(
    stored: bytes, decoder: msgspec.msgpack.Decoder[Any] | None
) -> None:
    codec = StateCodec(max_state_bytes=100)
    with pytest.raises(StateDecodeError) as slow:
        codec.decode("k", codec.unpack("k", stored), decoder)
    with pytest.raises(StateDecodeError) as fast:
        codec.load("k", stored, decoder)
    assert str(fast.value) == str(slow.value)
